// Registrations list (GET /auth/registrations) with revoke (DELETE /auth/registrations/{client_id}),
// what each provider's exports came to last (GET /admin/sync) and what the resource store holds of
// it (GET /admin/resources, when a destination is the resource store).
import { api } from './api.js';
import { $, alertBox, badge, confirmAction, flashNext, h, secondsText, timeEl } from './dom.js';

function jwksSource(r) {
  if (r.jwks_uri) return ['URL ', h('code', {}, r.jwks_uri)];
  const keys = (r.jwks && r.jwks.keys) || [];
  const kids = keys.map((k) => k.kid).filter(Boolean);
  const count = `${keys.length} inline key${keys.length === 1 ? '' : 's'}`;
  return [count, kids.length ? h('span', { class: 'sub' }, `kid ${kids.join(', ')}`) : null];
}

/** What each export of this provider came to last, and where its next incremental pull starts. */
function syncLines(sources) {
  return sources.map((s) => h(
    'span',
    { class: 'sub', 'data-sync': s.last_result },
    `${s.export_url}${s.types ? ` (_type ${s.types})` : ''}: last ${s.last_result} `,
    timeEl(s.last_at),
    s.since ? `; next pull from ${s.since}` : '; next pull from the beginning',
  ));
}

/** What the resource store holds of this provider, per type. */
function storedLine(counts) {
  if (!counts.length) return null;
  const each = counts.map((c) => `${Number(c.count).toLocaleString('en')} ${c.resourceType}`);
  return h('span', { class: 'sub', 'data-stored': '' }, `in the resource store: ${each.join(', ')}`);
}

/** The registration's sync plan: which export, how often, when next. */
function planLine(r) {
  if (!r.sync) return null;
  const p = r.sync;
  const what = `${p.export_url}${p.types ? ` (_type ${p.types})` : ''}`;
  const when = p.every_secs
    ? [`every ${secondsText(p.every_secs)}, next `, r.sync_next_at ? timeEl(r.sync_next_at) : 'not scheduled']
    : ['only when asked'];
  return h('span', { class: 'sub', 'data-plan': '' }, `sync plan: ${what}, `, ...when);
}

function row(r, sources, stored) {
  const revoked = r.revoked_at !== null && r.revoked_at !== undefined;
  const action = revoked
    ? ''
    : h('button', { type: 'button', class: 'small danger', 'data-revoke': r.client_id }, 'Revoke');
  if (action) action.setAttribute('aria-label', `Revoke the registration of ${r.name || r.aud}`);
  const syncNow = !revoked && r.sync
    ? h('button', { type: 'button', class: 'small', 'data-sync-now': r.client_id }, 'Sync now')
    : null;
  if (syncNow) syncNow.setAttribute('aria-label', `Start the next pull of ${r.name || r.aud} now`);
  return h(
    'tr',
    { 'data-client-id': r.client_id },
    h('td', { 'data-label': 'Provider', class: 'wrap' }, r.name ? [h('strong', {}, r.name), h('span', { class: 'sub' }, r.aud)] : r.aud,
      h('span', { class: 'sub' }, `our id there: ${r.consumer_client_id}`),
      h('span', { class: 'sub' }, `token endpoint: ${r.token_endpoint_in_use || 'not discovered yet'}`),
      r.token_origins && r.token_origins.length
        ? h('span', { class: 'sub' }, `token also to: ${r.token_origins.join(', ')}`) : null,
      r.file_origins ? h('span', { class: 'sub' }, `files only from: ${r.file_origins.join(', ')}`) : null,
      planLine(r),
      ...syncLines(sources),
      storedLine(stored)),
    h('td', { 'data-label': 'client_id', class: 'wrap' }, h('code', {}, r.client_id)),
    h('td', { 'data-label': 'Created' }, timeEl(r.created_at)),
    h('td', { 'data-label': 'JWKS source', class: 'wrap' }, jwksSource(r)),
    h('td', { 'data-label': 'Scope' }, r.scope ? h('code', {}, r.scope) : h('span', { class: 'muted' }, 'default')),
    h('td', { 'data-label': 'Status' }, revoked ? [badge('revoked'), ' ', timeEl(r.revoked_at)] : badge('active')),
    h('td', { 'data-label': 'Actions' }, syncNow, syncNow && action ? ' ' : null, action),
  );
}

async function load() {
  try {
    // Without a resource store (404) there is nothing stored to show.
    const noStore = (e) => (e.status === 404 ? { resources: [] } : Promise.reject(e));
    const [{ registrations }, { sources }, { resources }] = await Promise.all([
      api('/auth/registrations', { admin: true }),
      api('/admin/sync', { admin: true }),
      api('/admin/resources', { admin: true }).catch(noStore),
    ]);
    alertBox($('registrations-error'), '');
    $('registrations-empty').hidden = registrations.length > 0;
    $('registrations-table').hidden = registrations.length === 0;
    const of = (r) => sources.filter((s) => s.client_id === r.client_id);
    const storedOf = (r) => resources.filter((c) => c.provider === r.client_id);
    $('registrations-table').tBodies[0].replaceChildren(...registrations.map((r) => row(r, of(r), storedOf(r))));
  } catch (e) {
    if (!e.handled) alertBox($('registrations-error'), `The registrations could not be loaded: ${e.message}`);
  }
}

export const screen = {
  section: 'screen-registrations',
  nav: 'registrations',
  title: 'Registrations',
  admin: true,
  enter: load,
  leave() {},
};

export function wireRegistrations() {
  $('registrations-refresh').addEventListener('click', load);
  $('registrations-table').addEventListener('click', async (event) => {
    const sync = event.target.closest('button[data-sync-now]');
    if (sync) {
      try {
        const started = await api(`/admin/sync/${encodeURIComponent(sync.dataset.syncNow)}`, { method: 'POST', admin: true });
        flashNext(`A sync pull started: import job ${started.job_id}.`);
        location.hash = `#/jobs/${started.job_id}`;
      } catch (e) {
        if (!e.handled) alertBox($('registrations-error'), `The sync pull was not started: ${e.message}`);
      }
      return;
    }
    const button = event.target.closest('button[data-revoke]');
    if (!button) return;
    const clientId = button.dataset.revoke;
    const provider = button.closest('tr').cells[0].firstChild.textContent;
    const ok = await confirmAction({
      title: 'Revoke this registration?',
      message: `${provider} will no longer get tokens with client_id ${clientId}; tokens it holds stop working at once. This cannot be undone: the provider would have to register again.`,
      confirmLabel: 'Revoke',
    });
    if (!ok) {
      button.focus();
      return;
    }
    try {
      await api(`/auth/registrations/${encodeURIComponent(clientId)}`, { method: 'DELETE', admin: true });
      await load();
      $('registrations-title').focus();
    } catch (e) {
      if (!e.handled) alertBox($('registrations-error'), `The registration was not revoked: ${e.message}`);
    }
  });
}
