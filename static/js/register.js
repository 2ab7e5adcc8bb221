// Client registration (POST /auth/register): validate each field where the person typed it, send,
// and show the client_id and token endpoint, or the server's reason next to the field it concerns.
import { api } from './api.js';
import { $, alertBox, fieldError, h } from './dom.js';

// JWK members that only a private key has; such a key must never leave the provider.
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'];
// RFC 6749 §3.3 scope-token characters, tokens separated by single spaces.
const SCOPE_SYNTAX = /^[\x21\x23-\x5B\x5D-\x7E]+( [\x21\x23-\x5B\x5D-\x7E]+)*$/;

function httpUrlProblem(raw, what, { base = false } = {}) {
  if (!raw) return `Enter ${what}.`;
  let url;
  try {
    url = new URL(raw);
  } catch {
    return `This is not a complete URL: start with https:// (or http://) and a host name.`;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return 'Use an https:// or http:// URL.';
  if (!url.hostname) return 'The URL needs a host name.';
  if (base && (raw.includes('?') || raw.includes('#'))) {
    return 'A base URL cannot have a query (?…) or fragment (#…).';
  }
  if (url.username || url.password) return 'The URL must not contain a user name or password.';
  return '';
}

/** Parse the pasted key(s): a JWKS object to send, or a sentence saying what is wrong. */
function parseKeys(raw) {
  if (!raw) return { problem: 'Paste the public key: a JWK or a JWKS.' };
  let value;
  try {
    value = JSON.parse(raw);
  } catch (e) {
    return { problem: `This is not valid JSON (${e.message}).` };
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    return { problem: 'Paste a JSON object: one JWK ({"kty": …}) or a JWKS ({"keys": […]}).' };
  }
  let jwks;
  if (Array.isArray(value.keys)) jwks = value;
  else if (typeof value.kty === 'string') jwks = { keys: [value] };
  else return { problem: 'A JWK has a "kty" member and a JWKS a "keys" array; this has neither.' };
  if (jwks.keys.length === 0) return { problem: 'The key set is empty.' };
  for (const [i, key] of jwks.keys.entries()) {
    const leaked = PRIVATE_MEMBERS.filter((m) => key && m in key);
    if (leaked.length) {
      const which = jwks.keys.length > 1 ? `Key ${i + 1} is` : 'This is';
      return {
        problem: `${which} a private key (it has "${leaked[0]}"). Paste only the public key; the private key stays with the provider.`,
      };
    }
  }
  return { jwks };
}

const source = () => ($('reg-source-jwk').checked ? 'jwk' : 'url');

function showSource() {
  const jwk = source() === 'jwk';
  $('reg-jwk-field').hidden = !jwk;
  $('reg-jwks-uri-field').hidden = jwk;
}

// One check per field: returns the message (empty when fine) and shows it next to the field.
const checks = {
  'reg-aud': () => httpUrlProblem($('reg-aud').value.trim(), "the provider's FHIR base URL", { base: true }),
  'reg-consumer': () => ($('reg-consumer').value.trim() ? '' : "Enter this server's client id at the provider."),
  'reg-jwks-uri': () => (source() === 'url' ? httpUrlProblem($('reg-jwks-uri').value.trim(), 'the JWKS URL') : ''),
  'reg-jwk': () => (source() === 'jwk' ? parseKeys($('reg-jwk').value.trim()).problem || '' : ''),
  'reg-scope': () => {
    const scope = $('reg-scope').value.trim();
    return !scope || SCOPE_SYNTAX.test(scope) ? '' : 'Scopes are separated by single spaces, for example "system/*.read".';
  },
};

function check(id) {
  const problem = checks[id]();
  fieldError(id, problem);
  return problem;
}

/** Which field a server message is about, so it can be shown there too. */
function fieldFor(message) {
  if (/^jwks_uri|jwks_uri must/.test(message)) return 'reg-jwks-uri';
  if (/^jwks:|'jwks'/.test(message)) return source() === 'jwk' ? 'reg-jwk' : 'reg-jwks-uri';
  if (/consumer_client_id/.test(message)) return 'reg-consumer';
  if (/^token_origins/.test(message)) return 'reg-token-origins';
  if (/^file_origins/.test(message)) return 'reg-file-origins';
  if (/^token_endpoint/.test(message)) return 'reg-token-endpoint';
  if (/^aud:|'aud'|base URL/.test(message)) return 'reg-aud';
  if (/^name:/.test(message)) return 'reg-name';
  return null;
}

function showForm() {
  $('register-result').hidden = true;
  $('register-form').hidden = false;
}

export const screen = {
  section: 'screen-register',
  nav: 'register',
  title: 'Register a provider',
  admin: true,
  enter() {
    showSource();
  },
  leave() {},
};

/** Fill the key field with a public JWKS (from the key generator). */
export function usePublicKey(jwks) {
  showForm();
  $('reg-source-jwk').checked = true;
  showSource();
  $('reg-jwk').value = JSON.stringify(jwks, null, 2);
  fieldError('reg-jwk', '');
}

export function wireRegisterForm() {
  for (const radio of document.querySelectorAll('input[name="key-source"]')) {
    radio.addEventListener('change', () => {
      showSource();
      fieldError('reg-jwk', '');
      fieldError('reg-jwks-uri', '');
    });
  }
  // Check a field when the person leaves it, and again as they fix it.
  for (const id of Object.keys(checks)) {
    $(id).addEventListener('change', () => check(id));
    $(id).addEventListener('input', () => {
      if ($(id).getAttribute('aria-invalid') === 'true') check(id);
    });
  }

  $('register-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    alertBox($('register-error'), '');
    const invalid = Object.keys(checks).filter((id) => check(id));
    if (invalid.length) {
      $(invalid[0]).focus();
      return;
    }
    const body = {
      aud: $('reg-aud').value.trim(),
      consumer_client_id: $('reg-consumer').value.trim(),
    };
    if (source() === 'jwk') body.jwks = parseKeys($('reg-jwk').value.trim()).jwks;
    else body.jwks_uri = $('reg-jwks-uri').value.trim();
    const scope = $('reg-scope').value.trim();
    if (scope) body.scope = scope;
    const name = $('reg-name').value.trim();
    if (name) body.name = name;
    const origins = (id) => $(id).value.split(/[\s,]+/).filter(Boolean);
    if (origins('reg-token-origins').length) body.token_origins = origins('reg-token-origins');
    if (origins('reg-file-origins').length) body.file_origins = origins('reg-file-origins');
    const endpoint = $('reg-token-endpoint').value.trim();
    if (endpoint) body.token_endpoint = endpoint;

    const button = $('register-submit');
    button.disabled = true;
    try {
      const result = await api('/auth/register', { method: 'POST', body, admin: true });
      $('result-client-id').textContent = result.client_id;
      $('result-token-endpoint').textContent = result.token_endpoint;
      // Our other URLs share the token endpoint's base (PUBLIC_URL, or the request's host).
      const base = result.token_endpoint.replace(/\/auth\/token$/, '');
      $('result-import-url').textContent = `${base}/$import`;
      $('result-jwks-url').textContent = `${base}/jwks`;
      // Allowed, but usually a registration made twice: say so where it cannot be missed.
      const warnings = result.warnings || [];
      $('register-warnings').replaceChildren(...warnings.map((w) => h('p', {}, `Warning: ${w}`)));
      $('register-warnings').hidden = warnings.length === 0;
      $('register-form').reset();
      showSource();
      $('register-form').hidden = true;
      $('register-result').hidden = false;
      $('register-result').focus();
    } catch (e) {
      if (e.handled) return;
      alertBox($('register-error'), `The server did not register the provider: ${e.message}`);
      const field = fieldFor(e.message);
      if (field) {
        fieldError(field, e.message);
        $(field).focus();
      }
    } finally {
      button.disabled = false;
    }
  });

  $('register-another').addEventListener('click', () => {
    showForm();
    $('reg-aud').focus();
  });
}
