// The admin-credential prompt: try the credential against the server before keeping it, so a typo
// is reported here rather than on the next screen.
import { api, credential } from './api.js';
import { $, fieldError } from './dom.js';

let afterwards = '#/jobs';
let reason = '';

export const screen = {
  section: 'screen-credential',
  nav: null,
  title: 'Admin credential',
  admin: false,
  enter() {
    $('admin-token').value = '';
    fieldError('admin-token', reason);
    reason = '';
    // The field is what the person came here for.
    setTimeout(() => $('admin-token').focus(), 0);
  },
  leave() {},
};

/** Ask for the credential, then go to `route`; `why` explains a refusal. */
export function askForCredential(route, why = '') {
  if (route && route !== '#/credential') afterwards = route;
  reason = why;
  if (location.hash === '#/credential') screen.enter();
  else location.hash = '#/credential';
}

export function wireCredentialForm(onChange) {
  $('credential-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('admin-token').value.trim();
    if (!token) {
      fieldError('admin-token', 'Enter the admin credential.');
      $('admin-token').focus();
      return;
    }
    const button = $('credential-submit');
    button.disabled = true;
    try {
      await api('/auth/registrations', { admin: true, token });
      credential.set(token);
      fieldError('admin-token', '');
      onChange();
      location.hash = afterwards;
    } catch (e) {
      const message =
        e.status === 401
          ? 'The server refused this credential. Check ADMIN_TOKEN or the file DATA_DIR/admin-token.'
          : e.message;
      fieldError('admin-token', message);
      $('admin-token').focus();
    } finally {
      button.disabled = false;
    }
  });
}
