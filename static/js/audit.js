// Audit trail (GET /admin/audit): registrations, pings accepted and refused with their reasons,
// cancels and deletes, newest first.
import { api } from './api.js';
import { $, alertBox, h, timeEl } from './dom.js';

/** Refusals read as problems at a glance; everything else is plain. */
const refused = (action) => /refused/.test(action);

function row(e) {
  return h(
    'tr',
    { 'data-action': e.action },
    h('td', { 'data-label': 'When' }, timeEl(e.at)),
    h('td', { 'data-label': 'Who', class: 'wrap' }, e.actor),
    h('td', { 'data-label': 'What' }, h('span', { class: refused(e.action) ? 'warn-text' : null }, e.action)),
    h('td', { 'data-label': 'Subject', class: 'wrap' }, e.subject ? h('code', {}, e.subject) : ''),
    h('td', { 'data-label': 'Detail', class: 'wrap' }, e.detail || ''),
  );
}

async function load() {
  try {
    const { events } = await api(`/admin/audit?kind=${encodeURIComponent($('audit-kind').value)}`, { admin: true });
    alertBox($('audit-error'), '');
    $('audit-empty').hidden = events.length > 0;
    $('audit-table').hidden = events.length === 0;
    $('audit-table').tBodies[0].replaceChildren(...events.map(row));
  } catch (e) {
    if (!e.handled) alertBox($('audit-error'), `The audit trail could not be loaded: ${e.message}`);
  }
}

export const screen = {
  section: 'screen-audit',
  nav: 'audit',
  title: 'Audit trail',
  admin: true,
  enter: load,
  leave() {},
};

export function wireAudit() {
  $('audit-refresh').addEventListener('click', load);
  $('audit-kind').addEventListener('change', load);
}
