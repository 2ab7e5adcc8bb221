// Key generator (GET /generator?alg=): show the pair as JWK or PEM, copy it, or carry the public
// key over to the registration form. The pair lives only in this page's memory.
import { api } from './api.js';
import { $, alertBox } from './dom.js';
import { usePublicKey } from './register.js';

let pair = null;

function show() {
  if (!pair) return;
  const pem = $('key-format-pem').checked;
  $('key-public').value = pem ? pair.publicAsPEM : JSON.stringify(pair.publicAsJWK, null, 2);
  $('key-private').value = pem ? pair.privateAsPEM : JSON.stringify(pair.privateAsJWK, null, 2);
  $('key-public-kid').textContent = `(${pair.alg}, kid ${pair.publicAsJWK.kid})`;
}

export const screen = {
  section: 'screen-keys',
  nav: 'keys',
  title: 'Key generator',
  admin: false,
  enter() {},
  leave() {},
};

export function wireKeys() {
  $('keys-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const alg = $('key-alg').value;
    const button = $('key-generate');
    button.disabled = true;
    alertBox($('keys-error'), '');
    $('keys-status').textContent = `Generating an ${alg} key pair…`;
    try {
      pair = await api(`/generator?alg=${encodeURIComponent(alg)}`);
      show();
      $('key-output').hidden = false;
      $('keys-status').textContent = `New ${alg} key pair generated. Store the private key safely now.`;
    } catch (e) {
      $('keys-status').textContent = '';
      alertBox($('keys-error'), `No key pair was generated: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });
  for (const radio of document.querySelectorAll('input[name="key-format"]')) {
    radio.addEventListener('change', show);
  }
  $('key-use').addEventListener('click', () => {
    if (!pair) return;
    usePublicKey(pair.jwks);
    location.hash = '#/register';
  });
}
