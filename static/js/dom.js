// Small DOM helpers shared by the screens. Server data only ever reaches the page as text nodes
// (never innerHTML), so a hostile file name or error message cannot inject markup.

export const $ = (id) => document.getElementById(id);

/** Build an element: `h('a', {href: '#'}, 'text', child)`. Attributes are set as attributes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's content, skipping the DOM write when nothing changed (polling re-renders). */
export function setContent(el, ...children) {
  const fresh = h('div', {}, ...children);
  if (el.innerHTML !== fresh.innerHTML) el.replaceChildren(...fresh.childNodes);
}

export function setText(el, text) {
  const t = text ?? '';
  if (el.textContent !== t) el.textContent = t;
}

/** Show or clear a message next to a field, and mark the field for assistive technology. */
export function fieldError(inputId, message) {
  const input = $(inputId);
  const out = $(`${inputId}-error`);
  // The message's line is reserved even when empty: a message appearing on blur must not move the
  // button being clicked out from under the pointer.
  out.textContent = message || '';
  if (message) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

/** Show or hide an alert box with a message. */
export function alertBox(el, message) {
  el.textContent = message || '';
  el.hidden = !message;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatCount(n) {
  return Number(n ?? 0).toLocaleString();
}

/** A `<time>` for an ISO instant (or a Unix-seconds number), shown in local time. */
export function timeEl(value) {
  if (value === null || value === undefined) return '';
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  // With its time zone: a reader elsewhere (or a screenshot in a ticket) is never left guessing.
  return h('time', { datetime: date.toISOString() }, date.toLocaleString(undefined, { timeZoneName: 'short' }));
}

// "3 min 12 s" between two instants (ISO strings), for how long a job took.
export function durationText(from, to) {
  return secondsText((new Date(to) - new Date(from)) / 1000);
}

// "3 min 12 s" for a number of seconds (rounded; negative reads as 0).
export function secondsText(seconds) {
  const secs = Math.max(0, Math.round(seconds));
  if (Number.isNaN(secs)) return '';
  const hours = Math.floor(secs / 3600);
  const mins = Math.floor((secs % 3600) / 60);
  if (hours > 0) return `${hours} h ${mins} min`;
  if (mins > 0) return `${mins} min ${secs % 60} s`;
  return `${secs} s`;
}

export function badge(state) {
  return h('span', { class: `badge ${state}` }, state);
}

let flashMessage = '';

/** A message for the next screen (e.g. "job deleted"), announced politely. */
export function flashNext(message) {
  flashMessage = message;
}

export function showFlash() {
  $('flash').textContent = flashMessage;
  flashMessage = '';
}

/** Ask for confirmation in a modal dialog (focus is trapped; Escape cancels). */
export function confirmAction({ title, message, confirmLabel }) {
  const dialog = $('confirm-dialog');
  $('confirm-title').textContent = title;
  $('confirm-message').textContent = message;
  $('confirm-ok').textContent = confirmLabel;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
    dialog.showModal();
    // The safe choice gets the focus, so a stray Enter keeps things as they are.
    $('confirm-cancel').focus();
  });
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (plain http on another host) or no permission: fall back to a selection.
    const area = h('textarea', { class: 'visually-hidden', readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

/**
 * A long URL as one short line: its origin, "…", its last path segment, and "?…" for a query
 * (often a signature). The whole goes in a tooltip and a copy button beside it.
 */
export function shortUrl(raw) {
  try {
    const u = new URL(raw);
    const parts = u.pathname.split('/').filter(Boolean);
    const path = parts.length > 1 ? `/…/${parts[parts.length - 1]}` : u.pathname;
    return `${u.origin}${path}${u.search ? '?…' : ''}`;
  } catch {
    return raw.length > 60 ? `${raw.slice(0, 57)}…` : raw;
  }
}

/** Every `[data-copy=id]` button copies the value or text of element `id` and says so. */
export function wireCopyButtons() {
  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-copy]');
    if (!button) return;
    const source = $(button.dataset.copy);
    const editable = source instanceof HTMLTextAreaElement || source instanceof HTMLInputElement;
    const text = editable ? source.value : source.textContent;
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    const ok = await copyText(text);
    button.textContent = ok ? 'Copied ✓' : 'Copy failed: select and press Ctrl+C';
    setTimeout(() => {
      button.textContent = label;
    }, 2000);
  });
}
