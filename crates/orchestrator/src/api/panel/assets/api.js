// Requests to the orchestrator's API, with the operator's API key.
//
// The key lives in localStorage, so it survives reloads and is sent only to
// this origin (the page talks to no other). Every error of the API is JSON
// {"detail": "..."}; callers get it as an ApiError with that message.

const KEY_STORAGE = 'orchestrator.apiKey';

export const apiKey = {
  get() {
    try {
      return localStorage.getItem(KEY_STORAGE) || '';
    } catch {
      return ''; // storage disabled: the key lives only in the input field
    }
  },
  set(value) {
    try {
      if (value) localStorage.setItem(KEY_STORAGE, value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      // Storage disabled; nothing to keep.
    }
  },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** Sends a request and answers the decoded JSON body, or throws an ApiError. */
export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `the orchestrator did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON; the status says enough.
  }
  if (!response.ok) {
    const detail = typeof data?.detail === 'string' ? data.detail : `HTTP ${response.status}`;
    throw new ApiError(response.status, detail);
  }
  return data;
}

/** A path segment: engine ids look like "127.0.0.1:19023", stream ids like "key|session". */
export function segment(id) {
  return encodeURIComponent(id);
}
