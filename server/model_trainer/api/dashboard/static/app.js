// The dashboard: hash routes, the key form, and the pages. Every number comes from the
// API's JSON routes; forms take their defaults and bounds from /openapi.json, so the
// server's models stay the one definition of each field.

import { api, apiKey, forgetApiKey, onUnauthorized, request, setApiKey } from "./api.js";
import { AXES, LossChart, MultiLossChart, runColor } from "./chart.js";
import {
  Scope, bytes, card, duration, el, errorBox, facts, fill, number, progressBar, short, statusChip, tagChips, when,
} from "./ui.js";

const view = document.getElementById("view");
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_MS = 2000;
const LIST_POLL_MS = 3000;
// GET /runs/compare takes 2 to 32 runs.
const COMPARE_MAX = 32;

// ---- the API key ---------------------------------------------------------------------

const keyPanel = document.getElementById("key-form");
const keyError = document.getElementById("key-error");
const keyInput = document.getElementById("key-input");

function showKeyState() {
  const has = Boolean(apiKey());
  document.getElementById("key-state").textContent = has ? "API key saved in this browser" : "";
  document.getElementById("forget-key").hidden = !has;
  showPrincipal();
}

// Who the key acts as (GET /whoami), and a banner when the server runs without keys: then
// anyone who reaches it can use it. A refused key is the key form's business, not this one's.
async function showPrincipal() {
  const banner = document.getElementById("anonymous-banner");
  let me = null;
  try {
    me = await api.get("/whoami");
  } catch (e) {
    banner.hidden = true;
    return;
  }
  banner.hidden = !me.anonymous;
  if (!me.anonymous) {
    document.getElementById("key-state").textContent = `Signed in as ${me.name} (${me.role})`;
  }
}

onUnauthorized((error) => {
  keyError.textContent = apiKey()
    ? `The saved key was refused (${error.message}). Enter the right one.`
    : "This server needs an API key.";
  keyError.hidden = false;
  if (keyPanel.hidden) {
    keyPanel.hidden = false;
    keyInput.focus();
  }
});

keyPanel.querySelector("form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(keyInput.value.trim());
  keyInput.value = "";
  keyPanel.hidden = true;
  showKeyState();
  route();
});

document.getElementById("forget-key").addEventListener("click", () => {
  forgetApiKey();
  showKeyState();
  route();
});

// ---- the OpenAPI document: defaults, bounds and choices of the forms' fields ---------

let openapi = null;

async function schemaOf(name) {
  if (!openapi) openapi = await (await fetch("/openapi.json")).json();
  return openapi.components.schemas[name];
}

// The property's own schema (`anyOf: [X, null]` unwrapped) with its default.
function property(schema, name) {
  const prop = schema.properties[name] || {};
  const inner = (prop.anyOf || []).find((s) => s.type && s.type !== "null") || prop;
  return { ...inner, default: prop.default, description: prop.description || inner.description };
}

function numberInput(schema, name, { value, placeholder, step } = {}) {
  const prop = property(schema, name);
  const start = value !== undefined ? value : prop.default;
  return el("input", {
    type: "number",
    name,
    id: `field-${name}`,
    min: prop.minimum ?? (prop.exclusiveMinimum !== undefined ? prop.exclusiveMinimum : undefined),
    max: prop.maximum,
    step: step || (prop.type === "integer" ? 1 : "any"),
    value: start ?? undefined,
    placeholder,
    title: prop.description,
  });
}

function choiceInput(name, choices, value) {
  return el(
    "select",
    { name, id: `field-${name}` },
    choices.map((c) => el("option", { value: c, selected: c === value }, c))
  );
}

function field(labelText, input, hint) {
  return el("label", { class: "field" }, el("span", {}, labelText), input, hint ? el("small", {}, hint) : null);
}

// The numbers of a form as the JSON body wants them: blank fields are left out.
function numbersOf(form, names) {
  const out = {};
  for (const name of names) {
    const input = form.elements[name];
    if (input && input.value !== "") out[name] = Number(input.value);
  }
  return out;
}

// ---- shared pieces -------------------------------------------------------------------

function pageHead(title, ...actions) {
  return el("div", { class: "page-head" }, el("h1", {}, title), el("div", { class: "actions" }, actions));
}

function table(headers, id) {
  const body = el("tbody");
  const node = el(
    "table",
    { class: "table", id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    body
  );
  return { node, body };
}

function emptyRow(columns, text) {
  return el("tr", { class: "empty" }, el("td", { colspan: columns }, text));
}

function modelName(request) {
  if (!request) return "—";
  const parts = [request.model_family || "gpt2", request.model_size || "tiny"];
  const overrides = [
    ["n_layer", "L"], ["n_head", "H"], ["n_embd", "d"],
  ].filter(([k]) => request[k]).map(([k, p]) => `${p}${request[k]}`);
  if (overrides.length) parts.push(overrides.join(" "));
  return parts.join(" · ");
}

function budgetOf(request) {
  if (!request) return "—";
  if (request.max_steps) return `${request.max_steps} steps`;
  if (request.num_epochs) return `${request.num_epochs} epochs`;
  if (request.max_train_seconds) return duration(request.max_train_seconds);
  return "default time budget";
}

// ---- names, tags and metadata (store/labels.py) ---------------------------------------

// A list's cell for a run's or tokenizer's name and tags.
function labelsCell(job) {
  return el("td", {}, el("div", { class: "labels" },
    job.name ? el("span", { class: "job-name" }, job.name) : el("span", { class: "muted" }, "—"),
    tagChips(job.tags)));
}

function metadataView(metadata) {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return "—";
  return el("div", { class: "metadata" },
    entries.map(([k, v]) => el("div", {}, el("span", { class: "mono" }, k), " = ", v)));
}

// The tag and name-prefix filters of a list (`tag` and `name` of GET /runs, /tokenizers);
// `changed` runs once typing pauses.
function labelFilters(kind, scope, changed) {
  const tag = el("input", {
    type: "search", id: `${kind}-filter-tag`, name: "tag", placeholder: "any tag", size: 12, spellcheck: "false",
  });
  const name = el("input", { type: "search", id: `${kind}-filter-name`, name: "name", placeholder: "any name", size: 14 });
  const later = scope.debounce(300, changed);
  tag.addEventListener("input", later);
  name.addEventListener("input", later);
  return {
    nodes: [
      el("label", { class: "inline" }, "Tag ", tag),
      el("label", { class: "inline", title: "names starting with this (any case)" }, "Name ", name),
    ],
    active: () => Boolean(tag.value.trim() || name.value.trim()),
    query() {
      const out = [];
      if (tag.value.trim()) out.push(`&tag=${encodeURIComponent(tag.value.trim())}`);
      if (name.value.trim()) out.push(`&name=${encodeURIComponent(name.value.trim())}`);
      return out.join("");
    },
  };
}

// A list's refresh that shows only the latest answer: a filter changed while an older
// request was on its way must not be undone by that request's answer.
function latestOnly(load) {
  let asked = 0;
  return async () => {
    const mine = ++asked;
    const data = await load();
    return mine === asked ? data : null;
  };
}

// The Name, Tags and Metadata fields of the new-run and new-tokenizer forms; their hints
// are the request model's descriptions.
function labelFields(schema) {
  const about = (name) => property(schema, name).description;
  const name = el("input", {
    type: "text", name: "name", id: "field-name", maxlength: property(schema, "name").maxLength, placeholder: "optional",
  });
  const tags = el("input", { type: "text", name: "tags", id: "field-tags", placeholder: "baseline, lr-sweep", spellcheck: "false" });
  const metadata = el("textarea", {
    name: "metadata", id: "field-metadata", rows: 3, spellcheck: "false", placeholder: "dataset=made-up\nnote=first try",
  });
  return {
    node: el("fieldset", {}, el("legend", {}, "Labels"),
      el("div", { class: "row" },
        field("Name", name, about("name")),
        field("Tags", tags, `comma-separated: ${about("tags")}`)),
      field("Metadata", metadata, `one key=value a line: ${about("metadata")}`)),
    // The request's name, tags and metadata (left out when blank); an Error for a metadata
    // line without "=" (the server checks the rest and its 422 names the field).
    values() {
      const out = {};
      if (name.value.trim()) out.name = name.value.trim();
      const tagList = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
      if (tagList.length) out.tags = tagList;
      const pairs = {};
      metadata.value.split("\n").forEach((line, i) => {
        if (!line.trim()) return;
        const at = line.indexOf("=");
        if (at < 1) throw new Error(`Metadata line ${i + 1}: write key=value`);
        pairs[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      });
      if (Object.keys(pairs).length) out.metadata = pairs;
      return out;
    },
  };
}

// ---- corpus picker: corpora uploaded through the API, an upload, or a Data Bank id ----

function corpusPicker(scope) {
  const select = el("select", { name: "corpus", id: "corpus-select" });
  const status = el("small", { class: "muted", id: "upload-status" });
  const error = errorBox();
  const file = el("input", { type: "file", id: "corpus-file", accept: ".txt,.md,.jsonl,.csv,text/*" });
  const manual = el("input", {
    type: "text", id: "corpus-id", placeholder: "64 hex characters", pattern: "[0-9a-f]{64}", spellcheck: "false",
  });
  let known = [];

  async function reload(selected) {
    const data = await api.get("/corpora?limit=200", { signal: scope.signal });
    known = data.items;
    const current = selected || select.value;
    fill(select,
      ...(known.length
        ? known.map((c) =>
            el("option", { value: c.file_id, selected: c.file_id === current },
              `${c.name} · ${bytes(c.size)} · ${number(c.lines)} lines · ${when(c.created_at)}`))
        : [el("option", { value: "" }, "No corpus uploaded yet: upload one below")])
    );
  }

  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    error.show(null);
    status.textContent = `Uploading ${chosen.name} (${bytes(chosen.size)})…`;
    try {
      const info = await request("POST", `/corpora?name=${encodeURIComponent(chosen.name)}`, {
        body: chosen, contentType: "text/plain", signal: scope.signal,
      });
      await reload(info.file_id);
      manual.value = "";
      status.textContent = `Uploaded ${info.name}: ${number(info.lines)} lines, ${bytes(info.size)}.`;
    } catch (e) {
      status.textContent = "";
      error.show(e);
    }
    file.value = "";
  });

  const node = el(
    "div",
    { class: "corpus-picker" },
    field("Corpus", select),
    el("div", { class: "upload" }, el("label", { class: "button" }, "Upload a text file…", file), status),
    error,
    el("details", {}, el("summary", {}, "Use a corpus already in Data Bank"), field("Data Bank file_id", manual))
  );
  return {
    node,
    reload,
    value: () => manual.value.trim() || select.value,
    choose(fileId) {
      if (known.some((c) => c.file_id === fileId)) {
        select.value = fileId;
        manual.value = "";
      } else if (fileId) {
        manual.value = fileId;
        manual.closest("details").open = true;
      }
    },
  };
}

// ---- runs list -----------------------------------------------------------------------

function runRow(run, pick) {
  const p = run.progress || {};
  const steps = p.total_steps ? `${number(p.step)} / ${number(p.total_steps)}` : number(p.step);
  return el(
    "tr",
    { "data-run": run.run_id },
    el("td", {}, pick(run.run_id)),
    el("td", {}, el("a", { href: `#/runs/${run.run_id}`, class: "mono" }, run.run_id)),
    labelsCell(run),
    el("td", {}, statusChip(run.status)),
    el("td", {}, modelName(run.request)),
    el("td", { class: "progress-cell" }, progressBar(p.percent), el("small", {}, steps)),
    el("td", { class: "num" }, number(p.train_loss)),
    el("td", { class: "num" }, number(p.val_loss)),
    el("td", {}, when(run.created_at))
  );
}

async function runsPage(scope) {
  const error = errorBox();
  const filter = choiceInput("status", ["all", "queued", "running", "paused", "completed", "failed", "cancelled"], "all");
  const labels = labelFilters("runs", scope, () => refresh());
  const { node, body } = table(["", "Run", "Name", "Status", "Model", "Progress", "Train loss", "Val loss", "Created"], "runs-table");
  // The runs picked to compare, in the order picked. Kept here, not in the rows: the rows
  // are rebuilt as the list refreshes, and a run filtered out of view stays picked.
  const picked = new Set();
  const compare = el("button", { type: "button", id: "compare-runs", disabled: true, title: `pick 2 to ${COMPARE_MAX} runs` }, "Compare");
  const syncCompare = () => {
    compare.disabled = picked.size < 2 || picked.size > COMPARE_MAX;
    compare.textContent = picked.size ? `Compare (${picked.size})` : "Compare";
  };
  compare.addEventListener("click", () => (location.hash = `#/compare/${[...picked].join(",")}`));
  const pick = (runId) => el("input", {
    type: "checkbox", class: "compare-pick", value: runId, checked: picked.has(runId), "aria-label": `compare ${runId}`,
    onchange: (event) => {
      if (event.target.checked) picked.add(runId);
      else picked.delete(runId);
      syncCompare();
    },
  });
  view.append(
    pageHead("Runs",
      el("label", { class: "inline" }, "Status ", filter), labels.nodes, compare,
      el("a", { class: "button primary", href: "#/new-run" }, "New run")),
    error,
    card(null, node)
  );
  const load = latestOnly(() => {
    const status = filter.value === "all" ? "" : `&status=${filter.value}`;
    return api.get(`/runs?limit=50${status}${labels.query()}`, { signal: scope.signal });
  });
  // The rows are rebuilt only when the answer changed (or a minute passed, for "Created"):
  // a row rebuilt under the pointer would swallow a click on its checkbox.
  let shown = "";
  const refresh = async () => {
    try {
      const data = await load();
      if (!data) return;
      error.show(null);
      const none = filter.value !== "all" || labels.active() ? "No run matches these filters." : "No runs yet.";
      const key = JSON.stringify([none, data.items, Math.floor(Date.now() / 60000)]);
      if (key === shown) return;
      shown = key;
      fill(body, ...(data.items.length ? data.items.map((run) => runRow(run, pick)) : [emptyRow(9, none)]));
    } catch (e) {
      if (e.name !== "AbortError") error.show(e);
    }
  };
  filter.addEventListener("change", refresh);
  scope.every(LIST_POLL_MS, refresh);
}

// ---- tokenizers list and corpora -----------------------------------------------------

function tokenizerRow(tok) {
  const r = tok.request || {};
  const stats = tok.stats || {};
  return el(
    "tr",
    { "data-tokenizer": tok.tokenizer_id },
    el("td", { class: "mono" }, tok.tokenizer_id),
    labelsCell(tok),
    el("td", {}, statusChip(tok.status), tok.status === "failed" && tok.message ? el("small", { class: "error-text" }, tok.message) : null),
    el("td", {}, r.method === "sentencepiece" ? `sentencepiece (${r.model_type || "unigram"})` : r.method || "—"),
    el("td", { class: "num" }, number(r.vocab_size)),
    el("td", { class: "num" }, number(stats.tokens_per_char)),
    el("td", { class: "mono", title: r.corpus_file_id }, short(r.corpus_file_id)),
    el("td", {}, when(tok.created_at))
  );
}

async function tokenizersPage(scope) {
  const error = errorBox();
  const tokenizers = table(["Tokenizer", "Name", "Status", "Method", "Vocabulary", "Tokens/char", "Corpus", "Created"], "tokenizers-table");
  const corpora = table(["Name", "Size", "Lines", "file_id", "Uploaded"], "corpora-table");
  const labels = labelFilters("tokenizers", scope, () => refresh());
  view.append(
    pageHead("Tokenizers", labels.nodes, el("a", { class: "button primary", href: "#/new-tokenizer" }, "New tokenizer")),
    error,
    card(null, tokenizers.node),
    card("Corpora uploaded through the API", corpora.node)
  );
  const load = latestOnly(() => Promise.all([
    api.get(`/tokenizers?limit=100${labels.query()}`, { signal: scope.signal }),
    api.get("/corpora?limit=100", { signal: scope.signal }),
  ]));
  const refresh = async () => {
    try {
      const answers = await load();
      if (!answers) return;
      const [toks, corps] = answers;
      error.show(null);
      const none = labels.active() ? "No tokenizer matches these filters." : "No tokenizers yet.";
      fill(tokenizers.body,
        ...(toks.items.length ? toks.items.map(tokenizerRow) : [emptyRow(8, none)])
      );
      fill(corpora.body,
        ...(corps.items.length
          ? corps.items.map((c) =>
              el("tr", {}, el("td", {}, c.name), el("td", { class: "num" }, bytes(c.size)),
                el("td", { class: "num" }, number(c.lines)), el("td", { class: "mono", title: c.file_id }, short(c.file_id)),
                el("td", {}, when(c.created_at))))
          : [emptyRow(5, "None yet: upload one from the New tokenizer or New run form.")])
      );
    } catch (e) {
      if (e.name !== "AbortError") error.show(e);
    }
  };
  scope.every(LIST_POLL_MS, refresh);
}

// ---- new tokenizer -------------------------------------------------------------------

async function newTokenizerPage(scope) {
  const schema = await schemaOf("TokenizerRequest");
  const error = errorBox();
  const picker = corpusPicker(scope);
  const method = choiceInput("method", property(schema, "method").enum, "bpe");
  const modelType = choiceInput("model_type", property(schema, "model_type").enum, "unigram");
  const minFrequency = numberInput(schema, "min_frequency", { value: 2 });
  const spmOnly = field("SentencePiece algorithm", modelType);
  const bpeOnly = field("Minimum pair frequency", minFrequency);
  const lowercase = el("input", { type: "checkbox", name: "lowercase" });
  const labels = labelFields(schema);
  const submit = el("button", { type: "submit", class: "primary" }, "Train tokenizer");
  const form = el(
    "form",
    { class: "form", id: "tokenizer-form" },
    field("Method", method, "byte-level BPE (Hugging Face) or SentencePiece"),
    spmOnly,
    field("Vocabulary size", numberInput(schema, "vocab_size", { value: 4096 }), "tokens, special and byte tokens included"),
    bpeOnly,
    field("Holdout fraction", numberInput(schema, "holdout_fraction", { step: 0.01 }), "lines kept out to measure the tokenizer"),
    el("label", { class: "check" }, lowercase, " Lowercase the text"),
    picker.node,
    labels.node,
    error,
    el("div", { class: "form-actions" }, submit)
  );
  const sync = () => {
    spmOnly.hidden = method.value !== "sentencepiece";
    bpeOnly.hidden = method.value !== "bpe";
  };
  method.addEventListener("change", sync);
  sync();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    let body;
    try {
      body = {
        method: method.value,
        corpus_file_id: picker.value(),
        lowercase: lowercase.checked,
        ...numbersOf(form, ["vocab_size", "holdout_fraction"]),
        ...labels.values(),
      };
    } catch (e) {
      error.show(e);
      return;
    }
    if (method.value === "bpe") Object.assign(body, numbersOf(form, ["min_frequency"]));
    else body.model_type = modelType.value;
    submit.disabled = true;
    try {
      await api.post("/tokenizers/train", body);
      location.hash = "#/tokenizers";
    } catch (e) {
      error.show(e);
      submit.disabled = false;
    }
  });
  view.append(pageHead("New tokenizer"), card(null, form));
  await picker.reload().catch((e) => error.show(e));
}

// ---- new run -------------------------------------------------------------------------

const BUDGETS = { seconds: "max_train_seconds", steps: "max_steps", epochs: "num_epochs" };

async function newRunPage(scope) {
  const schema = await schemaOf("TrainRequest");
  const error = errorBox();
  const picker = corpusPicker(scope);
  const tokenizer = el("select", { name: "tokenizer_id", id: "tokenizer-select" });
  const size = choiceInput("model_size", (await schemaOf("ModelSize")).enum, property(schema, "model_size").default);
  const choice = async (name, type) => choiceInput(name, (await schemaOf(type)).enum, property(schema, name).default);
  const family = await choice("model_family", "ModelFamily");
  const optimizer = await choice("optimizer", "Optimizer");
  const precision = await choice("precision", "Precision");
  const device = await choice("device", "Device");
  const budgetKind = choiceInput("budget_kind", Object.keys(BUDGETS), "seconds");
  const budget = el("input", { type: "number", name: "budget", id: "field-budget", min: 0, step: "any", value: 120 });
  const labels = labelFields(schema);
  const submit = el("button", { type: "submit", class: "primary" }, "Start run");
  const n = (name, options) => numberInput(schema, name, options);
  const form = el(
    "form",
    { class: "form", id: "run-form" },
    el("fieldset", {}, el("legend", {}, "Data"),
      field("Tokenizer", tokenizer, "completed tokenizers; its corpus is picked below"),
      picker.node),
    el("fieldset", {}, el("legend", {}, "Model"),
      el("div", { class: "row" },
        field("Family", family),
        field("Optimizer", optimizer),
        field("Muon learning rate", n("muon_learning_rate", { placeholder: "muon only" })),
        field("Precision", precision)),
      el("div", { class: "row" },
        field("Preset", size),
        field("Layers", n("n_layer", { placeholder: "preset" })),
        field("Heads", n("n_head", { placeholder: "preset" })),
        field("Width", n("n_embd", { placeholder: "preset" })))),
    el("fieldset", {}, el("legend", {}, "Training"),
      el("div", { class: "row" },
        field("Budget", el("div", { class: "joined" }, budget, budgetKind)),
        field("Learning rate", n("learning_rate")),
        field("Batch size", n("batch_size")),
        field("Context (tokens)", n("max_seq_len"))),
      el("details", { id: "more-settings" }, el("summary", {}, "More settings"),
        el("div", { class: "row" },
          field("Warmup steps", n("warmup_steps")),
          field("Validate every (steps)", n("eval_interval")),
          field("Checkpoint every (steps)", n("checkpoint_interval")),
          field("Schedule", choiceInput("lr_schedule", (await schemaOf("LrSchedule")).enum, property(schema, "lr_schedule").default))),
        el("div", { class: "row" },
          field("Weight decay", n("weight_decay")),
          field("Dropout", n("dropout", { step: 0.05 })),
          field("Early stopping patience", n("early_stopping_patience", { placeholder: "off" })),
          field("Seed", n("seed"))),
        el("div", { class: "row" },
          field("Device", device, "cuda waits for a GPU worker"),
          field("Key/value heads", n("n_kv_head", { placeholder: "= heads (llama, qwen3)" }))))),
    labels.node,
    error,
    el("div", { class: "form-actions" }, submit)
  );
  let tokenizers = [];
  tokenizer.addEventListener("change", () => {
    const chosen = tokenizers.find((t) => t.tokenizer_id === tokenizer.value);
    if (chosen && chosen.request) picker.choose(chosen.request.corpus_file_id);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    let named;
    try {
      named = labels.values();
    } catch (e) {
      error.show(e);
      return;
    }
    const body = {
      ...named,
      model_family: family.value,
      optimizer: optimizer.value,
      precision: precision.value,
      device: device.value,
      model_size: size.value,
      lr_schedule: form.elements.lr_schedule.value,
      tokenizer_id: tokenizer.value,
      corpus_file_id: picker.value(),
      ...numbersOf(form, [
        "n_layer", "n_head", "n_embd", "learning_rate", "batch_size", "max_seq_len", "warmup_steps",
        "eval_interval", "checkpoint_interval", "weight_decay", "dropout", "early_stopping_patience", "seed",
        "n_kv_head",
      ]),
      // Muon's rate means nothing to AdamW (the server refuses it there).
      ...(optimizer.value === "muon" ? numbersOf(form, ["muon_learning_rate"]) : {}),
    };
    if (budget.value !== "") body[BUDGETS[budgetKind.value]] = Number(budget.value);
    submit.disabled = true;
    try {
      const accepted = await api.post("/runs/train", body);
      location.hash = `#/runs/${accepted.run_id}`;
    } catch (e) {
      error.show(e);
      submit.disabled = false;
    }
  });
  view.append(pageHead("New run"), card(null, form));
  try {
    const [toks] = await Promise.all([api.get("/tokenizers?limit=200", { signal: scope.signal }), picker.reload()]);
    tokenizers = toks.items.filter((t) => t.status === "completed");
    fill(tokenizer,
      ...(tokenizers.length
        ? tokenizers.map((t) => el("option", { value: t.tokenizer_id },
            `${t.tokenizer_id} · ${t.request.method} · ${number(t.request.vocab_size)} tokens`))
        : [el("option", { value: "" }, "No completed tokenizer: train one first")])
    );
    tokenizer.dispatchEvent(new Event("change"));
  } catch (e) {
    if (e.name !== "AbortError") error.show(e);
  }
}

// ---- one run -------------------------------------------------------------------------

function logLine(line) {
  const time = typeof line.timestamp === "string" ? line.timestamp.slice(11, 19) : "";
  const level = (line.level || "").toUpperCase();
  return `${time} ${level.padEnd(7)} ${line.message || line.event || JSON.stringify(line)}`;
}

function evalView(info) {
  if (!info) return el("p", { class: "muted" }, "No evaluation yet.");
  const rows = [
    ["Status", statusChip(info.status)],
    ["Split", info.split || (info.corpus_file_id ? `corpus ${short(info.corpus_file_id)}` : "—")],
    ["Loss", number(info.loss)],
    ["Perplexity", number(info.perplexity, 2)],
    ["Bits per character", number(info.bits_per_char)],
    ["Tokens per character", number(info.tokens_per_char)],
    ["Tokens scored", number(info.num_tokens)],
  ];
  const samples = (info.samples || []).map((s) =>
    el("pre", { class: "sample" }, el("b", {}, s.prompt), s.completion));
  return el("div", { id: "eval-result" },
    facts(rows),
    info.message ? el("p", { class: "muted" }, info.message) : null,
    samples.length ? [el("h3", {}, "Samples"), samples] : null);
}

async function runPage(scope, runId) {
  const base = `/runs/${runId}`;
  const error = errorBox();
  const chip = el("span", { id: "run-status" });
  const cancel = el("button", { type: "button", class: "danger", id: "cancel-run", hidden: true }, "Cancel run");
  // Pause: the run checkpoints and waits holding no worker; resume continues it from there.
  const pause = el("button", { type: "button", id: "pause-run", hidden: true }, "Pause");
  const resume = el("button", { type: "button", id: "resume-run", hidden: true }, "Resume");
  const progress = el("div", { id: "run-progress" });
  const canvas = el("canvas", { id: "loss-chart", class: "chart" });
  const logs = el("pre", { class: "logs", id: "run-logs" }, "…");
  const details = el("div", { id: "run-details" });
  const artifact = el("div", { id: "artifact" }, el("p", { class: "muted" }, "Available when the run completes."));
  const checkpoints = table(["Step", "Kind", "Val loss", "Written", "file_id"], "checkpoints-table");
  const evaluation = el("div", {}, el("p", { class: "muted" }, "…"));
  const evalError = errorBox();
  const evalButtons = ["validation", "test"].map((split) =>
    el("button", { type: "button", "data-split": split, disabled: true }, `Evaluate on ${split}`));
  const chart = new LossChart(canvas);
  scope.onClose(() => chart.dispose());
  const generate = generateCard(base, scope);

  view.append(
    pageHead(el("span", {}, "Run ", el("span", { class: "mono" }, runId), " ", chip), pause, resume, cancel),
    error,
    el("div", { class: "grid" },
      card("Progress", progress),
      card("Model and data", details),
      el("section", { class: "card wide" }, el("h2", {}, "Loss"), canvas),
      generate.node,
      card("Evaluation", evaluation, evalError, el("div", { class: "form-actions" }, evalButtons)),
      card("Checkpoints", checkpoints.node),
      card("Artifact", artifact),
      el("section", { class: "card wide" }, el("h2", {}, "Log"), logs))
  );

  let lastStep = -1;
  let run = null;
  let confirmUntil = 0;

  cancel.addEventListener("click", async () => {
    if (Date.now() > confirmUntil) {
      confirmUntil = Date.now() + 4000;
      cancel.textContent = "Click again to cancel";
      setTimeout(() => { if (Date.now() >= confirmUntil) cancel.textContent = "Cancel run"; }, 4100);
      return;
    }
    cancel.disabled = true;
    try {
      await api.post(`${base}/cancel`, {});
    } catch (e) {
      error.show(e);
    }
    cancel.disabled = false;
  });

  for (const [button, action] of [[pause, "pause"], [resume, "resume"]]) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      error.show(null);
      try {
        run = await api.post(`${base}/${action}`, {});
        showRun();
      } catch (e) {
        error.show(e);
      }
      button.disabled = false;
    });
  }

  for (const button of evalButtons) {
    button.addEventListener("click", async () => {
      evalError.show(null);
      try {
        await api.post(`${base}/evaluate`, { split: button.dataset.split });
        pollEval();
      } catch (e) {
        evalError.show(e);
      }
    });
  }

  function showRun() {
    const p = run.progress || {};
    fill(chip, statusChip(run.status));
    cancel.hidden = TERMINAL.has(run.status);
    pause.hidden = TERMINAL.has(run.status) || run.status === "paused";
    resume.hidden = run.status !== "paused";
    generate.follow(run.status);
    evalButtons.forEach((b) => (b.disabled = run.status !== "completed"));
    const steps = p.total_steps ? `${number(p.step)} / ${number(p.total_steps)}` : number(p.step);
    fill(progress,
      el("div", { class: "progress-line" }, progressBar(p.percent), el("b", {}, `${(p.percent || 0).toFixed(0)}%`)),
      facts([
        ["Step", steps],
        ["ETA", TERMINAL.has(run.status) ? "—" : duration(p.eta_seconds)],
        ["Tokens per second", number(p.tokens_per_sec, 0)],
        ["Train loss", number(p.train_loss)],
        ["Validation loss", number(p.val_loss)],
        ["Learning rate", p.learning_rate ? p.learning_rate.toExponential(2) : "—"],
        ["Attempts", String(run.attempts)],
      ]),
      run.message ? el("p", { class: run.status === "failed" ? "error-text" : "muted" }, run.message) : null,
      run.error ? el("p", { class: "error-text" }, `${run.error.kind} error ${run.error.code}: ${run.error.message}`) : null
    );
    const r = run.request || {};
    fill(details, facts([
      ["Name", run.name || "—"],
      ["Tags", run.tags && run.tags.length ? el("span", { class: "labels" }, tagChips(run.tags)) : "—"],
      ["Metadata", metadataView(run.metadata)],
      ["Model", modelName(r)],
      ["Budget", budgetOf(r)],
      ["Batch × context", `${r.batch_size ?? "—"} × ${r.max_seq_len ?? "—"}`],
      ["Learning rate", r.learning_rate ?? "—"],
      ["Optimizer", r.optimizer === "muon" ? `muon (${r.muon_learning_rate ?? "default"})` : (r.optimizer || "adamw")],
      ["Device, precision", `${r.device || "auto"}, ${r.precision || "auto"}`],
      ["Tokenizer", el("span", { class: "mono" }, r.tokenizer_id || "—")],
      ["Corpus", el("span", { class: "mono", title: r.corpus_file_id }, short(r.corpus_file_id))],
      ["Created", when(run.created_at)],
    ]));
  }

  async function loadMetrics() {
    const after = lastStep >= 0 ? `?after_step=${lastStep}` : "";
    const data = await api.get(`${base}/metrics${after}`, { signal: scope.signal });
    if (data.points.length) {
      lastStep = data.points[data.points.length - 1].step;
      chart.add(data.points);
    } else if (lastStep < 0) {
      chart.draw();
    }
  }

  async function loadLogs() {
    const data = await api.get(`${base}/logs?tail=200`, { signal: scope.signal });
    const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.textContent = data.lines.length ? data.lines.map(logLine).join("\n") : "No log lines yet.";
    if (atBottom) logs.scrollTop = logs.scrollHeight;
  }

  async function loadCheckpoints() {
    const data = await api.get(`${base}/checkpoints`, { signal: scope.signal });
    fill(checkpoints.body,
      ...(data.checkpoints.length
        ? data.checkpoints.map((c) => el("tr", {},
            el("td", { class: "num" }, number(c.step)), el("td", {}, c.kind),
            el("td", { class: "num" }, number(c.val_loss)), el("td", {}, when(c.created_at)),
            el("td", { class: "mono", title: c.file_id }, short(c.file_id))))
        : [emptyRow(5, "None yet.")])
    );
  }

  async function loadArtifact() {
    try {
      const pointer = await api.get(`${base}/artifact`, { signal: scope.signal });
      fill(artifact,
        facts([["Storage", pointer.storage], ["file_id", el("input", { class: "mono copyable", readonly: true, value: pointer.file_id, id: "artifact-file-id" })]]),
        el("p", { class: "muted" }, "Download and extract it with ", el("code", {}, `modeltrainer run download ${runId}`), ".")
      );
    } catch (e) {
      if (e.status !== 404) throw e;
      fill(artifact, el("p", { class: "muted" },
        run.status === "completed" ? "No artifact in Data Bank." : "Available when the run completes."));
    }
  }

  let evalPolling = false;
  function pollEval() {
    if (evalPolling) return;
    evalPolling = true;
    scope.every(POLL_MS, async () => {
      let info = null;
      try {
        info = await api.get(`${base}/eval`, { signal: scope.signal });
      } catch (e) {
        if (e.status !== 404) throw e;
      }
      fill(evaluation, evalView(info));
      const more = info !== null && !TERMINAL.has(info.status);
      evalPolling = more;
      return more;
    });
  }

  let checkpointTick = 0;
  scope.every(POLL_MS, async () => {
    try {
      run = await api.get(base, { signal: scope.signal });
      error.show(null);
      showRun();
      const done = TERMINAL.has(run.status);
      await loadMetrics();
      await loadLogs();
      if (done || checkpointTick++ % 3 === 0) await loadCheckpoints();
      if (done) {
        await loadArtifact();
        pollEval();
        return false;
      }
    } catch (e) {
      if (e.name === "AbortError") return false;
      error.show(e);
    }
    return true;
  });
}

// ---- generate box --------------------------------------------------------------------

function generateCard(base, scope) {
  const error = errorBox();
  const output = el("div", { id: "samples" });
  const prompt = el("textarea", { name: "prompt", id: "field-prompt", rows: 3, placeholder: "The start of the text (may be empty)" });
  const source = choiceInput("checkpoint", ["final model", "last checkpoint", "best checkpoint"], "final model");
  // Until the user picks one: the final model once the run completed, else its last checkpoint.
  let picked = false;
  source.addEventListener("change", () => (picked = true));
  const submit = el("button", { type: "submit", class: "primary", id: "generate" }, "Generate");
  const input = (name, attrs) => el("input", { type: "number", name, id: `field-${name}`, ...attrs });
  const form = el(
    "form",
    { class: "form", id: "generate-form" },
    field("Prompt", prompt),
    el("div", { class: "row" },
      field("New tokens", input("max_new_tokens", { min: 1, max: 2048, value: 80 })),
      field("Temperature", input("temperature", { min: 0, max: 5, step: 0.1, value: 0.8 })),
      field("Top-k", input("top_k", { min: 0, placeholder: "off" })),
      field("Seed", input("seed", { min: 0, placeholder: "random" })),
      field("Model", source)),
    error,
    el("div", { class: "form-actions" }, submit),
    output
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    const body = { prompt: prompt.value, ...numbersOf(form, ["max_new_tokens", "temperature", "top_k", "seed"]) };
    if (source.value !== "final model") body.checkpoint = source.value.split(" ")[0];
    submit.disabled = true;
    submit.textContent = "Generating…";
    try {
      const answer = await api.post(`${base}/generate`, body, { signal: scope.signal });
      fill(output,
        ...answer.samples.map((s) => el("pre", { class: "sample" }, el("b", {}, prompt.value), s)),
        el("p", { class: "muted" },
          `${answer.new_tokens} tokens in ${Math.round(answer.elapsed_ms)} ms · seed ${answer.seed} · ${answer.model.source}`)
      );
    } catch (e) {
      if (e.name !== "AbortError") error.show(e);
    }
    submit.disabled = false;
    submit.textContent = "Generate";
  });
  return {
    node: card("Generate text", form),
    follow(status) {
      if (!picked) source.value = status === "completed" ? "final model" : "last checkpoint";
    },
  };
}

// ---- compare runs --------------------------------------------------------------------

function swatch(i) {
  return el("span", { class: "swatch", style: `background: ${runColor(i)}` });
}

// A run's name (or id) with its color on the chart, linking to its page.
function runTitle(run, i) {
  return el("a", { href: `#/runs/${run.run_id}`, title: run.run_id }, swatch(i), run.label);
}

function settingValue(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function finalRow(run, i) {
  const f = run.final;
  return el(
    "tr",
    { "data-run": run.run_id },
    el("td", {}, runTitle(run, i)),
    el("td", {}, statusChip(run.status)),
    el("td", { class: "num" }, number(f.steps)),
    el("td", { class: "num" }, number(f.val_loss)),
    el("td", { class: "num" }, number(f.bits_per_char)),
    el("td", { class: "num" }, number(f.perplexity, 2)),
    el("td", { class: "num" }, number(f.tokens_per_sec, 0)),
    el("td", { class: "num" }, number(f.train_seconds, 1))
  );
}

// The settings whose values are not the same in every run: one row a setting, one column a run.
function differingTable(node, runs, differing) {
  const head = el("tr", {}, el("th", {}, "Setting"), runs.map((run, i) => el("th", {}, runTitle(run, i))));
  const rows = differing.map((d) => el(
    "tr",
    { "data-field": d.field },
    el("td", { class: "mono" }, d.field),
    runs.map((run) => el("td", {}, settingValue(d.values[run.run_id])))
  ));
  fill(node, el("thead", {}, head),
    el("tbody", {}, rows.length ? rows : emptyRow(runs.length + 1, "Every setting is the same.")));
}

function sampleView(run, i) {
  const s = run.sample;
  return el("div", { class: "compare-sample", "data-run": run.run_id },
    el("h3", {}, runTitle(run, i)),
    s && typeof s.text === "string"
      ? el("pre", { class: "sample" }, el("b", {}, s.prompt), s.text)
      : el("p", { class: "muted" }, (s && s.note) || "No sample."));
}

async function comparePage(scope, ids) {
  const base = `/runs/compare?${ids.split(",").map((id) => `run_id=${id}`).join("&")}`;
  const error = errorBox();
  const axis = el("select", { id: "compare-axis", name: "axis" },
    Object.entries(AXES).map(([value, text]) => el("option", { value }, text)));
  const canvas = el("canvas", { id: "compare-chart", class: "chart" });
  const chart = new MultiLossChart(canvas);
  scope.onClose(() => chart.dispose());
  const final = table(["Run", "Status", "Steps", "Val loss", "Bits/char", "Perplexity", "Tokens/s", "Seconds"], "compare-final");
  const differing = el("table", { class: "table", id: "compare-differing" });
  const prompt = el("input", { type: "text", name: "prompt", id: "compare-prompt", placeholder: "The start of the text (may be empty)" });
  const sample = el("button", { type: "submit", class: "primary", id: "compare-sample" }, "Sample each run");
  const samples = el("div", { id: "compare-samples" });
  const sampleError = errorBox();
  const sampleForm = el("form", { class: "form", id: "compare-sample-form" },
    field("Prompt", prompt, "one sample of each completed run's model, seed 0: the same runs give the same text"),
    sampleError,
    el("div", { class: "form-actions" }, sample),
    samples);
  axis.addEventListener("change", () => chart.setAxis(axis.value));

  view.append(
    pageHead(`Compare ${ids.split(",").length} runs`,
      el("label", { class: "inline" }, "Against ", axis), el("a", { class: "button", href: "#/runs" }, "All runs")),
    error,
    el("div", { class: "grid" },
      el("section", { class: "card wide" }, el("h2", {}, "Loss"), canvas),
      el("section", { class: "card wide" }, el("h2", {}, "Final figures"), final.node),
      el("section", { class: "card wide" }, el("h2", {}, "Settings that differ"), differing),
      el("section", { class: "card wide" }, el("h2", {}, "Samples"), sampleForm))
  );

  function show(data) {
    const runs = data.runs.map((run) => ({ ...run, label: run.name || run.run_id }));
    chart.show(runs);
    fill(final.body, runs.map(finalRow));
    differingTable(differing, runs, data.differing);
    return runs;
  }

  // A sample costs a generation per run: asked for by the button only, never by the polling.
  sampleForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    sampleError.show(null);
    sample.disabled = true;
    sample.textContent = "Sampling…";
    try {
      const data = await api.get(`${base}&prompt=${encodeURIComponent(prompt.value)}`, { signal: scope.signal });
      fill(samples, show(data).map(sampleView));
    } catch (e) {
      if (e.name !== "AbortError") sampleError.show(e);
    }
    sample.disabled = false;
    sample.textContent = "Sample each run";
  });

  // The curves grow while a run trains; once every run has ended the page stays as it is.
  scope.every(LIST_POLL_MS, async () => {
    try {
      const data = await api.get(base, { signal: scope.signal });
      error.show(null);
      show(data);
      return data.runs.some((run) => !TERMINAL.has(run.status));
    } catch (e) {
      if (e.name === "AbortError") return false;
      error.show(e);
      // An unknown run or a refused list stays so: asking again would not help.
      return e.status !== 404 && e.status !== 422;
    }
  });
}

// ---- routing -------------------------------------------------------------------------

const ROUTES = [
  [/^#\/runs\/(run-[0-9a-f]+)$/, runPage, "runs"],
  [/^#\/runs$/, runsPage, "runs"],
  [/^#\/compare\/(run-[0-9a-f]+(?:,run-[0-9a-f]+)+)$/, comparePage, "runs"],
  [/^#\/tokenizers$/, tokenizersPage, "tokenizers"],
  [/^#\/new-tokenizer$/, newTokenizerPage, "new-tokenizer"],
  [/^#\/new-run$/, newRunPage, "new-run"],
];

let scope = null;

async function route() {
  if (scope) scope.close();
  scope = new Scope();
  const hash = location.hash || "#/runs";
  const found = ROUTES.find(([pattern]) => pattern.test(hash));
  fill(view);
  document.querySelectorAll("[data-nav]").forEach((a) =>
    a.classList.toggle("active", Boolean(found) && a.dataset.nav === found[2]));
  if (!found) {
    view.append(pageHead("Not found"), el("p", {}, "No such page. ", el("a", { href: "#/runs" }, "See the runs.")));
    return;
  }
  const [pattern, page] = found;
  try {
    await page(scope, ...hash.match(pattern).slice(1));
  } catch (e) {
    if (e.name !== "AbortError") view.append(errorBox(), el("p", { class: "error" }, e.message || String(e)));
  }
}

window.addEventListener("hashchange", route);
showKeyState();
route();
