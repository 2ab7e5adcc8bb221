// Talking to this server: JSON in and out, the admin credential from sessionStorage, and error
// bodies (OAuth JSON or OperationOutcome) turned into sentences a person can act on.

const TOKEN_KEY = 'bulk-import.admin-token';

/** The admin credential kept for this tab only: sessionStorage dies with the tab. */
export const credential = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let onRefused = () => {};

/** Called when the server refuses the stored admin credential (401), after it is forgotten. */
export function whenCredentialRefused(handler) {
  onRefused = handler;
}

/** The most helpful sentence in an error body. */
function describe(status, body, text) {
  if (body && typeof body.error_description === 'string') return body.error_description;
  if (body && Array.isArray(body.issue)) {
    const texts = body.issue.map((i) => i.diagnostics).filter(Boolean);
    if (texts.length) return texts.join('; ');
  }
  if (text && text.length < 300 && !text.trimStart().startsWith('<')) return text;
  return `The server answered ${status}.`;
}

/**
 * Call the server. `admin` sends the stored credential (or `token`, to try one before keeping it);
 * `body` is sent as JSON. Resolves to the parsed JSON body (or null), or with `raw` to the body's
 * text; rejects with an ApiError.
 */
export async function api(path, { method = 'GET', body, admin = false, token, raw = false } = {}) {
  const headers = { Accept: 'application/json' };
  const bearer = token ?? (admin ? credential.get() : null);
  if (admin && !bearer) {
    const err = new ApiError(401, 'The admin credential is needed for this.');
    err.handled = true;
    onRefused();
    throw err;
  }
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, `The server could not be reached (${e.message}). Is it running?`);
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, describe(res.status, json, text), json);
    // A stored credential that stopped working (changed ADMIN_TOKEN) is forgotten; a trial one is not.
    if (res.status === 401 && admin && token === undefined) {
      credential.forget();
      err.handled = true;
      onRefused(err.message);
    }
    throw err;
  }
  return raw ? text : json;
}
