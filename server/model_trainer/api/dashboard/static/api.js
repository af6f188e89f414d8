// Calls to the Model Trainer API from the dashboard: same origin, JSON, X-API-Key.
//
// The key is entered once and kept in localStorage (this browser only). A 401 answer
// raises an ApiError and tells the page (onUnauthorized) to show the key form.

const KEY_STORAGE = "modelTrainer.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

let unauthorizedHandler = () => {};

export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  localStorage.setItem(KEY_STORAGE, key);
}

export function forgetApiKey() {
  localStorage.removeItem(KEY_STORAGE);
}

function headers(extra) {
  const all = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) all["X-API-Key"] = key;
  return all;
}

// The readable message of an error answer: the body's `message`, with the fields a 422
// names, or the HTTP status when the body is not ours.
async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    /* not JSON: a proxy's page */
  }
  if (body && typeof body.message === "string") {
    const fields = (body.details || []).map((d) => `${d.field}: ${d.message}`);
    const message = fields.length ? `${body.message} (${fields.join("; ")})` : body.message;
    return new ApiError(response.status, body.code, message, body.details);
  }
  return new ApiError(response.status, "HTTP_" + response.status, `HTTP ${response.status}`);
}

export async function request(method, path, { json, body, contentType, signal } = {}) {
  const extra = {};
  let payload = body;
  if (json !== undefined) {
    extra["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  } else if (contentType) {
    extra["Content-Type"] = contentType;
  }
  let response;
  try {
    response = await fetch(path, { method, headers: headers(extra), body: payload, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "NETWORK", "the API does not answer (network error)");
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) unauthorizedHandler(error);
    throw error;
  }
  if (response.status === 204) return null;
  return response.json();
}

export const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, json, options) => request("POST", path, { ...options, json }),
};
