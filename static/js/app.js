// Entry point: hash routes to screens, the admin-credential gate, and the header's session state.
// Hash routing keeps this a set of static files: any path the server does not know stays `/`.
import { credential, whenCredentialRefused } from './api.js';
import { screen as auditScreen, wireAudit } from './audit.js';
import { askForCredential, screen as credentialScreen, wireCredentialForm } from './credential.js';
import { $, showFlash, wireCopyButtons } from './dom.js';
import { screen as infoScreen } from './info.js';
import { dashboard, jobPage, wireJobPage } from './jobs.js';
import { screen as keysScreen, wireKeys } from './keys.js';
import { screen as registerScreen, wireRegisterForm } from './register.js';
import { screen as registrationsScreen, wireRegistrations } from './registrations.js';

const DEFAULT_ROUTE = '#/jobs';

const routes = [
  [/^#\/credential$/, credentialScreen],
  [/^#\/jobs$/, dashboard],
  [/^#\/jobs\/([0-9a-f]{1,128})$/, jobPage],
  [/^#\/register$/, registerScreen],
  [/^#\/registrations$/, registrationsScreen],
  [/^#\/keys$/, keysScreen],
  [/^#\/info$/, infoScreen],
  [/^#\/audit$/, auditScreen],
];

let current = null;

function showSession() {
  const known = Boolean(credential.get());
  $('session-state').textContent = known ? 'Admin credential entered' : 'Admin credential not entered';
  $('session-enter').hidden = known;
  $('session-forget').hidden = !known;
}

function route() {
  const hash = location.hash || DEFAULT_ROUTE;
  // In-page anchors such as the skip link are not routes.
  if (!hash.startsWith('#/')) return;
  const found = routes.map(([re, screen]) => [hash.match(re), screen]).find(([m]) => m);
  if (!found) {
    location.replace(DEFAULT_ROUTE);
    return;
  }
  const [match, screen] = found;
  if (screen.admin && !credential.get()) {
    askForCredential(hash);
    return;
  }
  if (current) current.leave();
  for (const section of document.querySelectorAll('main > section.screen')) {
    section.hidden = section.id !== screen.section;
  }
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === screen.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${screen.title} · Bulk Data Import`;
  showFlash();
  current = screen;
  screen.enter(...match.slice(1));
  // Move focus to the new screen's heading so keyboard and screen-reader users start there.
  const heading = document.querySelector(`#${screen.section} h1`);
  if (heading && screen !== credentialScreen) heading.focus({ preventScroll: false });
  showSession();
}

wireCopyButtons();
wireCredentialForm(showSession);
wireRegisterForm();
wireRegistrations();
wireKeys();
wireJobPage();
wireAudit();

whenCredentialRefused((why) => {
  showSession();
  askForCredential(location.hash, why ? `The server refused the stored credential: ${why}` : '');
});

$('session-forget').addEventListener('click', () => {
  credential.forget();
  showSession();
  if (current && current.admin) askForCredential(location.hash);
});

$('skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  $('main').focus();
});

window.addEventListener('hashchange', route);
route();
