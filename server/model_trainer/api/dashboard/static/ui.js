// Small DOM and formatting helpers the pages share.

// el("div", {class: "card"}, child, "text"...): attributes starting with "on" are listeners.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    // Through the CSSOM: the Content-Security-Policy refuses inline style attributes.
    else if (name === "style") node.style.cssText = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

// Replaces a node's children; null, undefined and false are left out (as in el()).
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== undefined && c !== null && c !== false));
}

export function statusChip(status) {
  return el("span", { class: `chip chip-${status}`, "data-status": status }, status);
}

export function errorBox() {
  const box = el("p", { class: "error", role: "alert", hidden: true });
  box.show = (error) => {
    box.textContent = error ? error.message || String(error) : "";
    box.hidden = !error;
  };
  return box;
}

export function short(id, keep = 12) {
  if (!id) return "";
  return id.length > keep + 1 ? `${id.slice(0, keep)}…` : id;
}

export function number(value, digits = 3) {
  if (value === null || value === undefined) return "—";
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return Number(value).toFixed(digits);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function when(ts) {
  if (!ts) return "—";
  const date = new Date(ts * 1000);
  const ago = (Date.now() - date.getTime()) / 1000;
  if (ago < 60) return "just now";
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  return date.toLocaleString();
}

export function progressBar(percent) {
  const value = Math.max(0, Math.min(100, percent || 0));
  return el(
    "div",
    { class: "bar", role: "progressbar", "aria-valuenow": value.toFixed(0), "aria-valuemin": 0, "aria-valuemax": 100 },
    el("div", { class: "bar-fill", style: `width: ${value}%` })
  );
}

// A job's tags as small chips (lists, run page, compare page).
export function tagChips(tags) {
  return (tags || []).map((tag) => el("span", { class: "tag" }, tag));
}

// Key/value rows: [["Step", "12 / 30"], ...].
export function facts(rows) {
  return el("dl", { class: "facts" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

export function card(title, ...children) {
  return el("section", { class: "card" }, title ? el("h2", {}, title) : null, ...children);
}

// A page's timers and requests, stopped together when the page is left.
export class Scope {
  constructor() {
    this.timers = [];
    this.controller = new AbortController();
    this.cleanups = [];
  }

  get signal() {
    return this.controller.signal;
  }

  get alive() {
    return !this.controller.signal.aborted;
  }

  // Calls `task` now and then `ms` after each call ends (never two at once).
  every(ms, task) {
    const tick = async () => {
      if (!this.alive) return;
      let again = true;
      try {
        again = (await task()) !== false;
      } catch (e) {
        if (e.name !== "AbortError") console.warn(e);
      }
      if (again && this.alive) this.timers.push(setTimeout(tick, ms));
    };
    tick();
  }

  // A function that calls `task` once, `ms` after its last call: a filter being typed in
  // asks the API when the typing pauses, not at every key.
  debounce(ms, task) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.alive && task(), ms);
    };
  }

  onClose(cleanup) {
    this.cleanups.push(cleanup);
  }

  close() {
    this.controller.abort();
    this.timers.forEach(clearTimeout);
    this.cleanups.forEach((f) => f());
  }
}
