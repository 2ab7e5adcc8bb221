// Server info (GET /info): each endpoint and our public key, with a copy button.
import { api } from './api.js';
import { $, alertBox, h } from './dom.js';

function pretty(value) {
  try {
    const parsed = JSON.parse(value);
    return typeof parsed === 'object' && parsed !== null ? JSON.stringify(parsed, null, 2) : value;
  } catch {
    return value;
  }
}

function item(entry, i) {
  const id = `info-value-${i}`;
  const text = pretty(String(entry.value));
  const value = text.includes('\n') ? h('pre', { id }, text) : h('code', { id, class: 'value' }, text);
  return h(
    'div',
    { class: 'info-item' },
    h('dt', {}, entry.label),
    h(
      'dd',
      {},
      h('div', { class: 'value-row' }, value,
        h('button', { type: 'button', class: 'small', 'data-copy': id, 'aria-label': `Copy ${entry.label}` }, 'Copy')),
      h('div', { class: 'description' }, entry.description),
    ),
  );
}

export const screen = {
  section: 'screen-info',
  nav: 'info',
  title: 'Server info',
  admin: false,
  async enter() {
    try {
      const entries = await api('/info');
      alertBox($('info-error'), '');
      $('info-list').replaceChildren(...entries.map(item));
    } catch (e) {
      alertBox($('info-error'), `The server info could not be loaded: ${e.message}`);
    }
  },
  leave() {},
};
