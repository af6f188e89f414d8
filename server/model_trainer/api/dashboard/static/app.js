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

// `as`: the input's name (and id) when the form has another field of the property's name
// (a sweep's own seed beside its base's).
function numberInput(schema, name, { value, placeholder, step, as } = {}) {
  const prop = property(schema, name);
  const start = value !== undefined ? value : prop.default;
  return el("input", {
    type: "number",
    name: as || name,
    id: `field-${as || name}`,
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

// A button that acts on a second click within 4 s: the first only asks for it (a cancel
// cannot be undone). `act` runs with the button disabled.
function confirmTwice(button, ask, act) {
  const text = button.textContent;
  let confirmUntil = 0;
  button.addEventListener("click", async () => {
    if (Date.now() > confirmUntil) {
      confirmUntil = Date.now() + 4000;
      button.textContent = ask;
      setTimeout(() => { if (Date.now() >= confirmUntil) button.textContent = text; }, 4100);
      return;
    }
    button.disabled = true;
    await act();
    button.disabled = false;
  });
}

// A run's model in a line; a fine-tuning run's: its method and base model.
function modelName(request) {
  if (!request) return "—";
  if (request.base_model) return `${methodName(request)} · ${baseModelName(request.base_model)}`;
  const parts = [request.model_family || "gpt2", request.model_size || "tiny"];
  const overrides = [
    ["n_layer", "L"], ["n_head", "H"], ["n_embd", "d"],
  ].filter(([k]) => request[k]).map(([k, p]) => `${p}${request[k]}`);
  if (overrides.length) parts.push(overrides.join(" "));
  return parts.join(" · ");
}

function methodName(request) {
  return request.method === "lora" ? "LoRA" : "full fine-tuning";
}

// A base model by its name (`names`: those uploaded through POST /models, by file_id),
// else by its reference.
function baseModelName(ref, names) {
  if (ref.startsWith("hf:")) return ref;
  const name = names && names.get(ref);
  return name ? name : `base ${short(ref, 8)}`;
}

// How a fine-tuning run trains its base model, in a line.
function tuningText(request) {
  const lora = request.lora || {};
  const how = request.method === "lora"
    ? `LoRA (rank ${lora.r ?? "—"}, alpha ${lora.alpha ?? "—"}), ${request.artifact_format || "merged"} artifact`
    : "full (every weight)";
  return request.corpus_format === "chat" ? `${how}; chat corpus, loss on ${request.loss_on}` : how;
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

// ---- base models (POST and GET /models: api/routes/models.py) ------------------------

// Parameters in millions: "0.04 M", "124.44 M", "7,241.73 M".
function millions(n) {
  if (n === null || n === undefined) return "—";
  return `${(n / 1e6).toLocaleString("en", { maximumFractionDigits: 2 })} M`;
}

function contextText(m) {
  return m.context_length ? `${number(m.context_length)} tokens` : "—";
}

// The uploaded models (GET /models, newest first), at most 200.
async function uploadedModels(scope) {
  return (await api.get("/models?limit=200", { signal: scope.signal })).items;
}

function modelRow(info) {
  const m = info.model;
  return el(
    "tr",
    { "data-model": info.file_id },
    el("td", {}, info.name),
    el("td", {}, m.architecture, el("small", { class: "muted" }, ` ${m.model_type}`)),
    el("td", { class: "num" }, millions(m.n_params)),
    el("td", { class: "num" }, contextText(m)),
    el("td", { class: "num" }, `${m.num_layers ?? "—"} × ${m.hidden_size ?? "—"}`),
    el("td", {}, m.chat_template ? "yes" : "no"),
    el("td", { class: "num" }, bytes(info.size)),
    el("td", { class: "mono", title: info.file_id }, short(info.file_id)),
    el("td", {}, when(info.created_at))
  );
}

async function modelsPage(scope) {
  const error = errorBox();
  const uploadError = errorBox();
  uploadError.id = "model-upload-error";
  const status = el("small", { class: "muted", id: "model-upload-status" });
  const file = el("input", { type: "file", id: "model-file", accept: ".tar,application/x-tar" });
  const models = table(
    ["Name", "Architecture", "Parameters", "Context", "Layers × width", "Chat template", "Size", "file_id", "Uploaded"],
    "models-table");
  view.append(
    pageHead("Base models", el("a", { class: "button primary", href: "#/new-run" }, "New run")),
    error,
    card("Upload a base model",
      el("p", { class: "muted" },
        "A pretrained model to fine-tune: a transformers model folder as ", el("code", {}, "save_pretrained"),
        " writes it (config.json, safetensors weights, tokenizer.json and its config), packed in a plain, ",
        "uncompressed tar: ", el("code", {}, "tar -cf my-model.tar my-model/"),
        ". The API checks it without loading it, then keeps it in Data Bank."),
      el("div", { class: "upload" }, el("label", { class: "button" }, "Upload a .tar…", file), status),
      uploadError),
    card("Uploaded models", models.node)
  );

  const refresh = async () => {
    try {
      const items = await uploadedModels(scope);
      error.show(null);
      fill(models.body, ...(items.length ? items.map(modelRow) : [emptyRow(9, "None yet: upload one above.")]));
    } catch (e) {
      if (e.name !== "AbortError") error.show(e);
    }
  };

  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    uploadError.show(null);
    file.disabled = true;
    status.textContent = `Uploading ${chosen.name} (${bytes(chosen.size)})…`;
    try {
      const info = await request("POST", `/models?name=${encodeURIComponent(chosen.name)}`, {
        body: chosen, contentType: "application/x-tar", signal: scope.signal,
      });
      const m = info.model;
      status.textContent =
        `Uploaded ${info.name}: ${m.architecture}, ${millions(m.n_params)} parameters, context ${contextText(m)}.`;
      await refresh();
    } catch (e) {
      status.textContent = "";
      if (e.name !== "AbortError") uploadError.show(e);
    }
    file.disabled = false;
    file.value = "";
  });
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

// ---- a run's settings: the new-run form's, and the base of a sweep's trials ----------

const BUDGETS = { seconds: "max_train_seconds", steps: "max_steps", epochs: "num_epochs" };
// The numbers of a TrainRequest that size a new model: the base model's own when fine-tuning
// (the server refuses them with base_model).
const SHAPE_NUMBERS = ["n_layer", "n_head", "n_embd", "n_kv_head"];
// The numbers of a TrainRequest these settings hold (sent when not blank).
const RUN_NUMBERS = [
  ...SHAPE_NUMBERS, "learning_rate", "batch_size", "max_seq_len", "warmup_steps",
  "eval_interval", "checkpoint_interval", "weight_decay", "dropout", "early_stopping_patience", "seed",
];

// The base model of a fine-tuning run (one uploaded with POST /models) and how it is trained:
// method, LoRA's rank and scale, a chat corpus and what its loss is on. None picked: a new
// model trained from scratch with a tokenizer.
async function fineTuningSettings(schema, scope) {
  const loraSchema = await schemaOf("LoraSpec");
  const select = el("select", { name: "base_model", id: "base-model-select" });
  const method = choiceInput("method", (await schemaOf("FineTuneMethod")).enum, property(schema, "method").default);
  const rank = numberInput(loraSchema, "r", { as: "lora_r" });
  const alpha = numberInput(loraSchema, "alpha", { as: "lora_alpha" });
  const format = el("select", { name: "corpus_format", id: "field-corpus_format" },
    el("option", { value: "auto" }, "text (read as for a new model)"),
    el("option", { value: "chat" }, "chat: conversations (JSON lines of messages)"));
  const lossOn = choiceInput("loss_on", property(schema, "loss_on").enum, property(schema, "loss_on").default);
  const loraFields = [rank, alpha];
  const node = el("fieldset", { id: "fine-tuning" }, el("legend", {}, "Fine-tuning"),
    el("div", { class: "row" },
      field("Method", method, "full: every weight; lora: low-rank adapters beside the frozen weights"),
      field("LoRA rank", rank, "the adapters' rank r"),
      field("LoRA alpha", alpha, "their scale is alpha / r")),
    el("div", { class: "row" },
      field("Corpus format", format, "chat: each line a {\"messages\": [{role, content}...]}, laid out by the model's chat template"),
      field("Loss on", lossOn, "chat only: the assistant's replies, or every token")));
  let models = [];
  const sync = () => {
    loraFields.forEach((input) => (input.disabled = method.value !== "lora"));
    lossOn.disabled = format.value !== "chat";
  };
  method.addEventListener("change", sync);
  format.addEventListener("change", sync);
  sync();
  return {
    select,
    node,
    method,
    // The picked model's GET /models entry; null for none (or a list not loaded yet).
    chosen: () => models.find((m) => m.file_id === select.value) || null,
    // The request's fine-tuning fields (with a base model picked).
    body() {
      const body = { base_model: select.value, method: method.value };
      if (method.value === "lora") {
        body.lora = {};
        if (rank.value !== "") body.lora.r = Number(rank.value);
        if (alpha.value !== "") body.lora.alpha = Number(alpha.value);
      }
      if (format.value === "chat") Object.assign(body, { corpus_format: "chat", loss_on: lossOn.value });
      return body;
    },
    async load() {
      models = await uploadedModels(scope);
      const current = select.value;
      fill(select,
        el("option", { value: "" }, "None: a new model trained from scratch, with a tokenizer"),
        models.map((m) => el("option", { value: m.file_id, selected: m.file_id === current },
          `${m.name} · ${m.model.architecture} · ${millions(m.model.n_params)} parameters`)));
      select.dispatchEvent(new Event("change"));
    },
  };
}

// The Data, Model and Training fieldsets of a TrainRequest (labels apart). `budgets`: the
// budget kinds offered, the first one picked (a sweep compares its trials at fixed steps
// or seconds, so it offers no epochs). `fineTuning`: offer a base model to fine-tune (the
// new-run form).
async function runSettings(scope, { budgets = Object.keys(BUDGETS), budget: start = 120, fineTuning = false } = {}) {
  const schema = await schemaOf("TrainRequest");
  const picker = corpusPicker(scope);
  const tokenizer = el("select", { name: "tokenizer_id", id: "tokenizer-select" });
  const size = choiceInput("model_size", (await schemaOf("ModelSize")).enum, property(schema, "model_size").default);
  const choice = async (name, type) => choiceInput(name, (await schemaOf(type)).enum, property(schema, name).default);
  const family = await choice("model_family", "ModelFamily");
  const optimizer = await choice("optimizer", "Optimizer");
  const precision = await choice("precision", "Precision");
  const device = await choice("device", "Device");
  const schedule = await choice("lr_schedule", "LrSchedule");
  const budgetKind = choiceInput("budget_kind", budgets, budgets[0]);
  const budget = el("input", { type: "number", name: "budget", id: "field-budget", min: 0, step: "any", value: start });
  const n = (name, options) => numberInput(schema, name, options);
  const context = n("max_seq_len");
  const learningRate = n("learning_rate");
  const weightDecay = n("weight_decay");
  const contextHint = el("small", { id: "context-hint" });
  const tuning = fineTuning ? await fineTuningSettings(schema, scope) : null;
  // What sizes a new model: hidden (and not sent) while a base model is picked.
  const tokenizerField = field("Tokenizer", tokenizer, "completed tokenizers; its corpus is picked below");
  const familyField = field("Family", family);
  const shapeRow = el("div", { class: "row" },
    field("Preset", size),
    field("Layers", n("n_layer", { placeholder: "preset" })),
    field("Heads", n("n_head", { placeholder: "preset" })),
    field("Width", n("n_embd", { placeholder: "preset" })));
  const kvField = field("Key/value heads", n("n_kv_head", { placeholder: "= heads (llama, qwen3)" }));
  const nodes = [
    el("fieldset", {}, el("legend", {}, "Data"),
      tuning ? field("Base model", tuning.select,
        el("span", {}, "a pretrained model to fine-tune, uploaded on the ", el("a", { href: "#/models" }, "Base models"),
          " page; none: train a new one")) : null,
      tokenizerField,
      picker.node),
    tuning ? tuning.node : null,
    el("fieldset", {}, el("legend", {}, "Model"),
      el("div", { class: "row" },
        familyField,
        field("Optimizer", optimizer),
        field("Muon learning rate", n("muon_learning_rate", { placeholder: "muon only" })),
        field("Precision", precision)),
      shapeRow),
    el("fieldset", {}, el("legend", {}, "Training"),
      el("div", { class: "row" },
        field("Budget", el("div", { class: "joined" }, budget, budgetKind)),
        field("Learning rate", learningRate),
        field("Batch size", n("batch_size")),
        el("label", { class: "field" }, el("span", {}, "Context (tokens)"), context, contextHint)),
      el("details", { id: "more-settings" }, el("summary", {}, "More settings"),
        el("div", { class: "row" },
          field("Warmup steps", n("warmup_steps")),
          field("Validate every (steps)", n("eval_interval")),
          field("Checkpoint every (steps)", n("checkpoint_interval")),
          field("Schedule", schedule)),
        el("div", { class: "row" },
          field("Weight decay", weightDecay),
          field("Dropout", n("dropout", { step: 0.05 })),
          field("Early stopping patience", n("early_stopping_patience", { placeholder: "off" })),
          field("Seed", n("seed"))),
        el("div", { class: "row" },
          field("Device", device, "cuda waits for a GPU worker"),
          kvField))),
  ];
  let tokenizers = [];
  tokenizer.addEventListener("change", () => {
    const chosen = tokenizers.find((t) => t.tokenizer_id === tokenizer.value);
    if (chosen && chosen.request) picker.choose(chosen.request.corpus_file_id);
  });

  // Fine-tuning starts from its own optimizer, learning rate and weight decay where the
  // request gives none (the server's; a new model's defaults would be far too high): while
  // a base model is picked, the fields still at a new model's default are left blank (and
  // adamw picked), and given back when it is not.
  const scratch = [[learningRate, String(property(schema, "learning_rate").default)],
    [weightDecay, String(property(schema, "weight_decay").default)]];
  const defaultOptimizer = property(schema, "optimizer").default;
  let tuned = false;
  let swappedOptimizer = false;
  function syncTuning() {
    const now = Boolean(tuning && tuning.select.value);
    const shape = [tokenizerField, familyField, shapeRow, kvField];
    shape.forEach((node) => (node.hidden = now));
    shape.forEach((node) => node.querySelectorAll("input, select").forEach((i) => (i.disabled = now)));
    if (tuning) tuning.node.hidden = !now;
    const lora = now && tuning.method.value === "lora";
    // LoRA trains its adapters with AdamW (the server refuses muon there).
    optimizer.querySelector("option[value=muon]").disabled = lora;
    if (lora && optimizer.value === "muon") {
      optimizer.value = "adamw";
      swappedOptimizer = true;
    }
    const base = now ? tuning.chosen() : null;
    contextHint.textContent = base && base.model.context_length
      ? `at most ${number(base.model.context_length)}, the base model's context` : "";
    if (now === tuned) return;
    tuned = now;
    for (const [input, value] of scratch) {
      if (now && input.value === value) {
        input.value = "";
        input.placeholder = "fine-tuning's default";
      } else if (!now && input.value === "") {
        input.value = value;
        input.placeholder = "";
      }
    }
    if (now && optimizer.value === defaultOptimizer) {
      optimizer.value = "adamw";
      swappedOptimizer = true;
    } else if (!now && swappedOptimizer && optimizer.value === "adamw") {
      optimizer.value = defaultOptimizer;
    }
    if (!now) swappedOptimizer = false;
  }
  if (tuning) {
    tuning.select.addEventListener("change", syncTuning);
    tuning.method.addEventListener("change", syncTuning);
  }
  syncTuning();

  return {
    schema,
    nodes,
    // The request's settings as `form` holds them.
    body(form) {
      const fineTune = Boolean(tuning && tuning.select.value);
      const body = {
        optimizer: optimizer.value,
        precision: precision.value,
        device: device.value,
        lr_schedule: schedule.value,
        corpus_file_id: picker.value(),
        ...numbersOf(form, fineTune ? RUN_NUMBERS.filter((name) => !SHAPE_NUMBERS.includes(name)) : RUN_NUMBERS),
        // Muon's rate means nothing to AdamW (the server refuses it there).
        ...(optimizer.value === "muon" ? numbersOf(form, ["muon_learning_rate"]) : {}),
      };
      // A base model brings its own architecture and tokenizer.
      if (fineTune) Object.assign(body, tuning.body());
      else Object.assign(body, { model_family: family.value, model_size: size.value, tokenizer_id: tokenizer.value });
      if (budget.value !== "") body[BUDGETS[budgetKind.value]] = Number(budget.value);
      return body;
    },
    // The completed tokenizers, the corpora (and the base models) to pick from.
    async load() {
      const [toks] = await Promise.all([
        api.get("/tokenizers?limit=200", { signal: scope.signal }), picker.reload(), tuning ? tuning.load() : null,
      ]);
      tokenizers = toks.items.filter((t) => t.status === "completed");
      fill(tokenizer,
        ...(tokenizers.length
          ? tokenizers.map((t) => el("option", { value: t.tokenizer_id },
              `${t.tokenizer_id} · ${t.request.method} · ${number(t.request.vocab_size)} tokens`))
          : [el("option", { value: "" }, "No completed tokenizer: train one first")])
      );
      tokenizer.dispatchEvent(new Event("change"));
    },
  };
}

// ---- new run -------------------------------------------------------------------------

async function newRunPage(scope) {
  const settings = await runSettings(scope, { fineTuning: true });
  const error = errorBox();
  const labels = labelFields(settings.schema);
  const submit = el("button", { type: "submit", class: "primary" }, "Start run");
  const form = el("form", { class: "form", id: "run-form" },
    settings.nodes, labels.node, error, el("div", { class: "form-actions" }, submit));
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
    submit.disabled = true;
    try {
      const accepted = await api.post("/runs/train", { ...named, ...settings.body(form) });
      location.hash = `#/runs/${accepted.run_id}`;
    } catch (e) {
      error.show(e);
      submit.disabled = false;
    }
  });
  view.append(pageHead("New run"), card(null, form));
  await settings.load().catch((e) => e.name !== "AbortError" && error.show(e));
}

// ---- one run -------------------------------------------------------------------------

function logLine(line) {
  const time = typeof line.timestamp === "string" ? line.timestamp.slice(11, 19) : "";
  const level = (line.level || "").toUpperCase();
  return `${time} ${level.padEnd(7)} ${line.message || line.event || JSON.stringify(line)}`;
}

// The change from `before` to `after`, signed: "−0.412".
function change(before, after, digits) {
  if (typeof before !== "number" || typeof after !== "number") return "—";
  const delta = after - before;
  return `${delta < 0 ? "−" : "+"}${Math.abs(delta).toFixed(digits)}`;
}

// A fine-tuning run's evaluation beside its base model's on the same text: before and after.
function beforeAfter(info) {
  const split = info.split ? info.split[0].toUpperCase() + info.split.slice(1) + " loss" : "Loss";
  const rows = [[split, "loss", 3], ["Perplexity", "perplexity", 2], ["Bits per character", "bits_per_char", 3]];
  return el("table", { class: "table", id: "eval-before-after" },
    el("thead", {}, el("tr", {},
      el("th", {}, ""), el("th", { class: "num" }, "Before (base model)"), el("th", { class: "num" }, "After (fine-tuned)"),
      el("th", { class: "num" }, "Change"))),
    el("tbody", {}, rows.map(([label, key, digits]) => el("tr", { "data-metric": key },
      el("td", {}, label),
      el("td", { class: "num", "data-when": "before" }, number(info.base[key], digits)),
      el("td", { class: "num", "data-when": "after" }, number(info[key], digits)),
      el("td", { class: "num" }, change(info.base[key], info[key], digits))))));
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
    info.base ? [beforeAfter(info), el("h3", {}, "Fine-tuned model")] : null,
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
  let baseNames = null;

  confirmTwice(cancel, "Click again to cancel", async () => {
    try {
      await api.post(`${base}/cancel`, {});
    } catch (e) {
      error.show(e);
    }
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
    const tuned = Boolean(r.base_model);
    if (tuned) generate.offerBase();
    fill(details, facts([
      ["Name", run.name || "—"],
      ["Tags", run.tags && run.tags.length ? el("span", { class: "labels" }, tagChips(run.tags)) : "—"],
      ["Metadata", metadataView(run.metadata)],
      ...(tuned
        ? [
            ["Base model", el("span", { title: r.base_model }, baseModelName(r.base_model, baseNames))],
            ["Fine-tuning", tuningText(r)],
          ]
        : [["Model", modelName(r)]]),
      ["Budget", budgetOf(r)],
      ["Batch × context", `${r.batch_size ?? "—"} × ${r.max_seq_len ?? "—"}`],
      ["Learning rate", r.learning_rate ?? "—"],
      ["Optimizer", r.optimizer === "muon" ? `muon (${r.muon_learning_rate ?? "default"})` : (r.optimizer || "adamw")],
      ["Device, precision", `${r.device || "auto"}, ${r.precision || "auto"}`],
      ["Tokenizer", tuned ? "the base model's own" : el("span", { class: "mono" }, r.tokenizer_id || "—")],
      ["Corpus", el("span", { class: "mono", title: r.corpus_file_id }, short(r.corpus_file_id))],
      ["Created", when(run.created_at)],
    ]));
  }

  // The names of the uploaded base models (GET /models), looked up once for a fine-tuning run.
  async function loadBaseNames() {
    const ref = run.request && run.request.base_model;
    if (baseNames || !ref || ref.startsWith("hf:")) return;
    baseNames = new Map((await uploadedModels(scope)).map((m) => [m.file_id, m.name]));
    showRun();
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
      await loadBaseNames();
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

// Where a generation's weights came from (GenerateResponse.model), in words.
function sourceText(model) {
  if (model.source === "base") return "base model (before training)";
  if (model.source === "checkpoint") return `checkpoint at step ${number(model.step)}`;
  return "final model";
}

// One answer of POST /runs/{id}/generate: its samples after the prompt, and how they came.
function generatedView(answer, promptText, title) {
  const source = answer.model.source;
  return el("div", { class: "generated", "data-source": source },
    title ? el("h3", {}, title) : null,
    answer.samples.map((s) => el("pre", { class: "sample", "data-source": source }, el("b", {}, promptText), s)),
    el("p", { class: "muted" },
      `${answer.new_tokens} tokens in ${Math.round(answer.elapsed_ms)} ms · seed ${answer.seed} · ${sourceText(answer.model)}`));
}

function generateCard(base, scope) {
  const error = errorBox();
  const output = el("div", { id: "samples" });
  const prompt = el("textarea", { name: "prompt", id: "field-prompt", rows: 3, placeholder: "The start of the text (may be empty)" });
  // The request's `checkpoint`: none for the completed run's model.
  const source = el("select", { name: "checkpoint", id: "field-checkpoint" },
    el("option", { value: "" }, "final model"),
    el("option", { value: "last" }, "last checkpoint"),
    el("option", { value: "best" }, "best checkpoint"));
  // Until the user picks one: the final model once the run completed, else its last checkpoint.
  let picked = false;
  let status = null;
  source.addEventListener("change", () => (picked = true));
  const submit = el("button", { type: "submit", class: "primary", id: "generate" }, "Generate");
  // A fine-tuning run's: the same request to its model and to the base model it started from.
  const both = el("button", { type: "button", id: "generate-both", hidden: true }, "Compare with the base model");
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
    el("div", { class: "form-actions" }, submit, both),
    output
  );

  // Runs `task` with the buttons disabled; its error is shown.
  async function busy(button, task) {
    error.show(null);
    const text = button.textContent;
    submit.disabled = both.disabled = true;
    button.textContent = "Generating…";
    try {
      await task();
    } catch (e) {
      if (e.name !== "AbortError") error.show(e);
    }
    submit.disabled = both.disabled = false;
    button.textContent = text;
  }

  const bodyOf = (checkpoint) => {
    const body = { prompt: prompt.value, ...numbersOf(form, ["max_new_tokens", "temperature", "top_k", "seed"]) };
    if (checkpoint) body.checkpoint = checkpoint;
    return body;
  };
  const ask = (body) => api.post(`${base}/generate`, body, { signal: scope.signal });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value;
    busy(submit, async () => fill(output, generatedView(await ask(bodyOf(source.value)), text)));
  });
  // The run's model as picked (the final one, or the last checkpoint while it trains, when
  // the base model is picked), then the base model with the same seed: the two side by side.
  both.addEventListener("click", () => {
    const text = prompt.value;
    busy(both, async () => {
      const mine = source.value === "base" ? (status === "completed" ? "" : "last") : source.value;
      const tuned = await ask(bodyOf(mine));
      const before = await ask({ ...bodyOf("base"), seed: tuned.seed });
      fill(output, generatedView(tuned, text, "Fine-tuned model"), generatedView(before, text, "Base model (before training)"));
    });
  });
  return {
    node: card("Generate text", form),
    follow(now) {
      status = now;
      if (!picked) source.value = now === "completed" ? "" : "last";
    },
    // A fine-tuning run: its base model can be asked too (`checkpoint: "base"`).
    offerBase() {
      if (!both.hidden) return;
      source.options[0].textContent = "fine-tuned model";
      source.append(el("option", { value: "base", title: "the model before training" }, "base model"));
      both.hidden = false;
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

// GET /runs/compare of these runs, in this order.
function compareUrl(runIds) {
  return `/runs/compare?${runIds.map((id) => `run_id=${id}`).join("&")}`;
}

// Several runs' loss curves on one chart, with the picker of what they are drawn against:
// the compare page's and a sweep's. The canvas is `${prefix}-chart`, the picker `${prefix}-axis`.
function lossCurves(scope, prefix) {
  const axis = el("select", { id: `${prefix}-axis`, name: "axis" },
    Object.entries(AXES).map(([value, text]) => el("option", { value }, text)));
  const canvas = el("canvas", { id: `${prefix}-chart`, class: "chart curves" });
  const chart = new MultiLossChart(canvas);
  scope.onClose(() => chart.dispose());
  axis.addEventListener("change", () => chart.setAxis(axis.value));
  return { picker: el("label", { class: "inline" }, "Against ", axis), canvas, chart };
}

async function comparePage(scope, ids) {
  const base = compareUrl(ids.split(","));
  const error = errorBox();
  const { picker, canvas, chart } = lossCurves(scope, "compare");
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

  view.append(
    pageHead(`Compare ${ids.split(",").length} runs`, picker, el("a", { class: "button", href: "#/runs" }, "All runs")),
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

// ---- sweeps (POST/GET /sweeps: api/sweeps.py, sweeps/) -------------------------------

// A trial's settings as one line: "learning_rate=0.01, batch_size=8".
function paramsText(params) {
  return Object.entries(params || {}).map(([k, v]) => `${k}=${settingValue(v)}`).join(", ");
}

// A sweep's steps or seconds (its `resource`) in words.
function resourceText(value, resource) {
  return resource === "seconds" ? duration(value) : `${number(value)} steps`;
}

function sweepRow(sweep) {
  const p = sweep.progress;
  const best = p.trials.find((t) => t.run_id === sweep.best_run_id);
  return el(
    "tr",
    { "data-sweep": sweep.sweep_id },
    el("td", {}, el("a", { href: `#/sweeps/${sweep.sweep_id}`, class: "mono" }, sweep.sweep_id)),
    labelsCell(sweep),
    el("td", {}, statusChip(sweep.status)),
    el("td", { class: "num" }, `${p.finished} / ${p.trials.length}`),
    el("td", { class: "num" }, number(p.stopped)),
    el("td", { class: "best-run" }, best
      ? [el("a", { href: `#/runs/${best.run_id}`, class: "mono" }, best.run_id),
        el("small", { class: "muted" }, `${paramsText(best.params)} · ${number(best.bits_per_char)} bits/char`)]
      : "—"),
    el("td", {}, when(sweep.created_at))
  );
}

async function sweepsPage(scope) {
  const error = errorBox();
  const filter = choiceInput("status", ["all", "queued", "running", "completed", "failed", "cancelled"], "all");
  const labels = labelFilters("sweeps", scope, () => refresh());
  const { node, body } = table(["Sweep", "Name", "Status", "Trials ended", "Stopped early", "Best run", "Created"], "sweeps-table");
  view.append(
    pageHead("Sweeps",
      el("label", { class: "inline" }, "Status ", filter), labels.nodes,
      el("a", { class: "button primary", href: "#/new-sweep", id: "new-sweep" }, "New sweep")),
    error,
    card(null, node)
  );
  const load = latestOnly(() => {
    const status = filter.value === "all" ? "" : `&status=${filter.value}`;
    return api.get(`/sweeps?limit=50${status}${labels.query()}`, { signal: scope.signal });
  });
  const refresh = async () => {
    try {
      const data = await load();
      if (!data) return;
      error.show(null);
      const none = filter.value !== "all" || labels.active() ? "No sweep matches these filters." : "No sweeps yet.";
      fill(body, ...(data.items.length ? data.items.map(sweepRow) : [emptyRow(7, none)]));
    } catch (e) {
      if (e.name !== "AbortError") error.show(e);
    }
  };
  filter.addEventListener("change", refresh);
  scope.every(LIST_POLL_MS, refresh);
}

// ---- one sweep -----------------------------------------------------------------------

function stoppedAt(trial) {
  return trial.stopped_at_rung !== null && trial.stopped_at_rung !== undefined;
}

// Why successive halving stopped a trial: its validation loss at the rung against the cutoff.
function stoppedChip(trial, resource) {
  const result = trial.rungs.find((r) => r.rung === trial.stopped_at_rung);
  const why = result
    ? `validation loss ${number(result.value, 4)} at ${resourceText(result.resource, resource)} > cutoff ${number(result.cutoff, 4)}`
    : "";
  return [
    el("span", { class: "chip chip-stopped", title: why }, `stopped at rung ${trial.stopped_at_rung}`),
    why ? el("small", { class: "muted rung-result" }, why) : null,
  ];
}

// A leaderboard row; `rank` is null for a trial not started yet, `color` its curve's on the
// chart (undefined when not drawn).
function trialRow(trial, rank, resource, color) {
  const started = trial.status !== "planned";
  const name = [color !== undefined ? swatch(color) : null, `#${trial.index} `, el("span", { class: "mono" }, trial.run_id)];
  return el(
    "tr",
    { "data-run": trial.run_id, "data-trial": trial.index, class: stoppedAt(trial) ? "stopped" : undefined },
    el("td", { class: "num" }, rank === null ? "—" : String(rank)),
    el("td", {}, started ? el("a", { href: `#/runs/${trial.run_id}`, class: "trial-link" }, name) : name),
    el("td", { class: "mono" }, paramsText(trial.params)),
    el("td", { class: "trial-status" }, statusChip(trial.status), stoppedAt(trial) ? stoppedChip(trial, resource) : null),
    el("td", { class: "num" }, number(trial.bits_per_char)),
    el("td", { class: "num" }, number(trial.val_loss)),
    el("td", { class: "num" }, number(trial.steps)),
    el("td", { class: "num" }, number(trial.train_seconds, 1))
  );
}

// The trials in the leaderboard's order (best first), then those not started yet.
function ranked(sweep) {
  const byRun = new Map(sweep.progress.trials.map((t) => [t.run_id, t]));
  const listed = sweep.leaderboard.map((id) => byRun.get(id)).filter(Boolean);
  const rest = sweep.progress.trials.filter((t) => !sweep.leaderboard.includes(t.run_id));
  return [...listed.map((t, i) => [t, i + 1]), ...rest.map((t) => [t, null])];
}

// The trials whose curves are drawn: the started ones, the best COMPARE_MAX of them (what
// GET /runs/compare takes), in trial order so that a trial keeps its color as others start.
function charted(sweep) {
  const started = ranked(sweep).filter(([t]) => t.status !== "planned").map(([t]) => t);
  return started.slice(0, COMPARE_MAX).sort((a, b) => a.index - b.index);
}

function spaceText(space) {
  const dims = Object.entries(space.parameters).map(([name, d]) => {
    if (d.values) return `${name} ∈ {${d.values.map(settingValue).join(", ")}}`;
    const scale = [d.log ? "log" : null, d.integer ? "integer" : null, d.num ? `${d.num} points` : null].filter(Boolean);
    return `${name} ∈ [${d.low}, ${d.high}]${scale.length ? ` (${scale.join(", ")})` : ""}`;
  });
  const method = space.method === "random" ? `random, ${space.trials} trials, seed ${space.seed ?? 0}` : "grid";
  return el("div", { class: "metadata" }, el("span", {}, method), dims.map((d) => el("span", { class: "mono" }, d)));
}

function sweepFacts(sweep) {
  const p = sweep.progress;
  const r = sweep.request || {};
  const halving = r.early_stopping;
  return facts([
    ["Message", sweep.message || "—"],
    ["Sweep", el("span", { class: "mono" }, sweep.sweep_id)],
    ["Tags", sweep.tags.length ? el("span", { class: "labels" }, tagChips(sweep.tags)) : "—"],
    ["Metadata", metadataView(sweep.metadata)],
    ["Search", r.space ? spaceText(r.space) : "—"],
    ["Trials", `${p.created} of ${p.trials.length} started · ${p.finished} ended · ${p.stopped} stopped early`],
    ["Max concurrent", String(sweep.max_concurrent)],
    ["Budget", `${resourceText(sweep.budget, sweep.resource)} a trial`],
    ["Rungs", sweep.rungs.length
      ? `${sweep.rungs.map((v) => resourceText(v, sweep.resource)).join(", ")} (reduction factor ${halving ? halving.reduction_factor : "—"})`
      : "no early stopping"],
    ["Saved by stopping", p.stopped ? resourceText(p.saved, sweep.resource) : "—"],
    ["Base model", `${modelName(r.base)}, ${budgetOf(r.base)}`],
    ["Created", when(sweep.created_at)],
  ]);
}

async function sweepPage(scope, sweepId) {
  const base = `/sweeps/${sweepId}`;
  const error = errorBox();
  const title = el("span", { id: "sweep-title" }, sweepId);
  const chip = el("span", { id: "sweep-status" });
  const cancel = el("button", { type: "button", class: "danger", id: "cancel-sweep", hidden: true }, "Cancel sweep");
  const about = el("div", { id: "sweep-facts" });
  const board = table(["Rank", "Trial", "Settings", "Status", "Bits/char", "Val loss", "Steps", "Seconds"], "sweep-leaderboard");
  const curves = lossCurves(scope, "sweep");
  const note = el("p", { class: "muted", id: "sweep-chart-note" });
  const compare = el("a", { class: "button", id: "sweep-compare", hidden: true }, "Compare these runs");
  view.append(
    pageHead(el("span", {}, "Sweep ", title, " ", chip), curves.picker, compare, cancel),
    error,
    el("div", { class: "grid" },
      el("section", { class: "card wide" }, el("h2", {}, "Leaderboard"), board.node),
      el("section", { class: "card wide" }, el("h2", {}, "Loss"), curves.canvas, note),
      el("section", { class: "card wide" }, el("h2", {}, "Sweep"), about))
  );

  let sweep = null;
  confirmTwice(cancel, "Click again to cancel", async () => {
    try {
      sweep = await api.post(`${base}/cancel`, {});
      showSweep();
    } catch (e) {
      error.show(e);
    }
  });

  // The leaderboard's rows are rebuilt only when they changed (as the runs list's): a row
  // rebuilt under the pointer would swallow a click on its link.
  let shown = "";
  function showSweep() {
    fill(title, sweep.name || sweepId);
    fill(chip, statusChip(sweep.status));
    cancel.hidden = TERMINAL.has(sweep.status);
    fill(about, sweepFacts(sweep));
    const colors = new Map(charted(sweep).map((t, i) => [t.run_id, i]));
    const rows = ranked(sweep);
    const key = JSON.stringify([rows, [...colors]]);
    if (key === shown) return;
    shown = key;
    fill(board.body, ...rows.map(([t, rank]) => trialRow(t, rank, sweep.resource, colors.get(t.run_id))));
  }

  // The drawn trials' curves; the runs as GET /runs/compare answered (none when no trial
  // started). It takes 2 runs or more: a lone trial is asked for twice and drawn once.
  async function showCurves() {
    const trials = charted(sweep);
    const ids = trials.map((t) => t.run_id);
    compare.hidden = ids.length < 2;
    compare.href = `#/compare/${ids.join(",")}`;
    const stopped = trials.some(stoppedAt);
    fill(note, !ids.length ? "No trial has started yet." : stopped ? "Faded: trials stopped early by successive halving." : null);
    if (!ids.length) return [];
    const data = await api.get(compareUrl(ids.length === 1 ? [ids[0], ids[0]] : ids), { signal: scope.signal });
    const runs = data.runs.slice(0, trials.length).map((run, i) => ({ ...run, label: `#${trials[i].index}`, faded: stoppedAt(trials[i]) }));
    curves.chart.show(runs);
    return runs;
  }

  // Until the sweep has ended and so have the runs drawn (a cancelled sweep ends at once,
  // its running trials within a step).
  scope.every(POLL_MS, async () => {
    try {
      sweep = await api.get(base, { signal: scope.signal });
      error.show(null);
      showSweep();
      const runs = await showCurves();
      return !TERMINAL.has(sweep.status) || runs.some((run) => !TERMINAL.has(run.status));
    } catch (e) {
      if (e.name === "AbortError") return false;
      error.show(e);
      return e.status !== 404;
    }
  });
}

// ---- new sweep -----------------------------------------------------------------------

// TrainRequest fields a search space does not vary: the budget is every trial's yardstick
// (sweeps/plan.py FIXED_FIELDS); the rest say where a run's data comes from or where it
// runs, not what it trains (the server refuses any that is not a training setting).
const NOT_SEARCHED = new Set(["max_steps", "num_epochs", "max_train_seconds", "user_id", "threads", "device", "corpus_format"]);

// The settings a search space can vary, from the TrainRequest schema: its numbers and its
// choices, each {name, kind: "integer" | "number" | "choice", choices, description}.
async function searchable(schema) {
  const out = [];
  for (const name of Object.keys(schema.properties)) {
    if (NOT_SEARCHED.has(name)) continue;
    const prop = property(schema, name);
    const choices = prop.enum || (prop.$ref ? (await schemaOf(prop.$ref.split("/").pop())).enum : null);
    if (choices) out.push({ name, kind: "choice", choices, description: prop.description });
    else if (prop.type === "integer" || prop.type === "number") out.push({ name, kind: prop.type, description: prop.description });
  }
  return out;
}

// One row of the search space: a setting and its values (a list) or its range (numbers
// only). `dimension()` is the request's entry for it, or an Error saying what is wrong.
function spaceRow(settings, { name = "learning_rate", values = "" } = {}) {
  const param = el("select", { class: "sweep-param-name", "aria-label": "setting" },
    settings.map((s) => el("option", { value: s.name, selected: s.name === name, title: s.description }, s.name)));
  const kind = el("select", { class: "sweep-param-kind", "aria-label": "values or range" },
    el("option", { value: "values" }, "values"), el("option", { value: "range" }, "range"));
  const list = el("input", {
    type: "text", class: "sweep-param-values", value: values, placeholder: "comma-separated: 1e-3, 3e-3", spellcheck: "false",
    "aria-label": "values",
  });
  const numberBox = (cls, placeholder, attrs) =>
    el("input", { type: "number", step: "any", class: cls, placeholder, "aria-label": placeholder, ...attrs });
  const low = numberBox("sweep-param-low", "low");
  const high = numberBox("sweep-param-high", "high");
  const num = numberBox("sweep-param-num", "points (grid)", { min: 2, max: 64, step: 1 });
  const log = el("input", { type: "checkbox", class: "sweep-param-log" });
  const range = el("div", { class: "range" }, low, high, el("label", { class: "check", title: "log-spaced (grid) or log-uniform (random)" }, log, "log"), num);
  const remove = el("button", { type: "button", class: "link sweep-param-remove" }, "Remove");
  const node = el("tr", {}, el("td", {}, param), el("td", {}, kind), el("td", {}, list, range), el("td", {}, remove));
  const setting = () => settings.find((s) => s.name === param.value);
  const sync = () => {
    // A choice is a list of its values; only numbers have ranges.
    const choice = setting().kind === "choice";
    kind.disabled = choice;
    if (choice) kind.value = "values";
    list.placeholder = choice ? setting().choices.join(", ") : "comma-separated: 1e-3, 3e-3";
    list.hidden = kind.value !== "values";
    range.hidden = kind.value !== "range";
  };
  param.addEventListener("change", sync);
  kind.addEventListener("change", sync);
  sync();
  return {
    node,
    remove,
    name: () => param.value,
    // How many points it gives a grid (null when it cannot say yet).
    size() {
      if (kind.value === "range") return num.value ? Number(num.value) : null;
      return list.value.split(",").filter((v) => v.trim()).length;
    },
    dimension() {
      const s = setting();
      if (kind.value === "range") {
        if (low.value === "" || high.value === "") throw new Error(`${s.name}: give the range's low and high`);
        const out = { low: Number(low.value), high: Number(high.value), log: log.checked, integer: s.kind === "integer" };
        if (num.value !== "") out.num = Number(num.value);
        return out;
      }
      const given = list.value.split(",").map((v) => v.trim()).filter(Boolean);
      if (!given.length) throw new Error(`${s.name}: give at least one value`);
      if (s.kind === "choice") return { values: given };
      return {
        values: given.map((v) => {
          const x = Number(v);
          if (!Number.isFinite(x)) throw new Error(`${s.name}: ${v} is not a number`);
          return x;
        }),
      };
    },
  };
}

async function newSweepPage(scope) {
  const settings = await runSettings(scope, { budgets: ["steps", "seconds"], budget: 1000 });
  const [sweepSchema, spaceSchema, ashaSchema] = await Promise.all(["SweepRequest", "SearchSpace", "Asha"].map(schemaOf));
  const searched = await searchable(settings.schema);
  const error = errorBox();
  const labels = labelFields(sweepSchema);
  const rows = el("tbody");
  const space = el("table", { class: "table space", id: "sweep-space" },
    el("thead", {}, el("tr", {}, ["Setting", "Kind", "Values, or low, high, log and points", ""].map((h) => el("th", {}, h)))), rows);
  const add = el("button", { type: "button", id: "sweep-param-add" }, "Add a setting");
  const method = choiceInput("method", property(spaceSchema, "method").enum, "grid");
  const order = choiceInput("order", property(spaceSchema, "order").enum, property(spaceSchema, "order").default);
  const trials = numberInput(spaceSchema, "trials", { placeholder: "random only" });
  const count = el("small", { class: "muted", id: "sweep-count" });
  const early = el("input", { type: "checkbox", name: "early_stopping", id: "field-early_stopping" });
  const halving = el("div", { class: "row" },
    field("Grace (first rung)", numberInput(ashaSchema, "grace", { placeholder: "budget / factor²" }), property(ashaSchema, "grace").description),
    field("Reduction factor", numberInput(ashaSchema, "reduction_factor"), "a trial goes on past a rung if within the best 1/factor"));
  const submit = el("button", { type: "submit", class: "primary", id: "sweep-submit" }, "Start sweep");
  const form = el("form", { class: "form", id: "sweep-form" },
    settings.nodes,
    el("fieldset", {}, el("legend", {}, "Search"),
      space,
      el("div", { class: "form-actions" }, add),
      el("div", { class: "row" },
        field("Method", method, "grid: every combination; random: draws from the lists and ranges"),
        field("Trials", trials, property(spaceSchema, "trials").description),
        field("Seed", numberInput(spaceSchema, "seed", { as: "space_seed" }), "of the random draws and of the shuffled order"),
        field("Start order", order, property(spaceSchema, "order").description),
        field("Max concurrent", numberInput(sweepSchema, "max_concurrent"), "trials running at once")),
      count),
    el("fieldset", {}, el("legend", {}, "Early stopping"),
      el("label", { class: "check" }, early, " Stop the worse trials early (asynchronous successive halving)"),
      halving),
    labels.node,
    error,
    el("div", { class: "form-actions" }, submit)
  );

  const dims = [];
  function addRow(start) {
    const row = spaceRow(searched, start);
    dims.push(row);
    rows.append(row.node);
    row.remove.addEventListener("click", () => {
      dims.splice(dims.indexOf(row), 1);
      row.node.remove();
      sync();
    });
    sync();
  }
  // What the choices allow: the trials field for random search, the halving fields when on,
  // and how many trials a grid makes.
  function sync() {
    const random = method.value === "random";
    trials.disabled = !random;
    form.elements.space_seed.disabled = !random && order.value !== "shuffled";
    halving.querySelectorAll("input").forEach((i) => (i.disabled = !early.checked));
    const sizes = dims.map((d) => d.size());
    const product = sizes.every((n) => n !== null) ? sizes.reduce((a, b) => a * b, 1) : null;
    count.textContent = random
      ? `${trials.value || "?"} trials drawn`
      : `${product ?? "?"} trials${sizes.length > 1 ? ` (${sizes.map((n) => n ?? "?").join(" × ")})` : ""}`;
  }
  // A new row starts on a setting not searched yet.
  add.addEventListener("click", () => {
    const unused = searched.find((s) => !dims.some((d) => d.name() === s.name)) || searched[0];
    addRow({ name: unused.name });
  });
  form.addEventListener("input", sync);
  form.addEventListener("change", sync);
  addRow({ name: "learning_rate", values: "1e-3, 3e-3, 1e-2" });

  // The request, or an Error naming what the form lacks (the server checks the rest, and
  // its 422 names the trial and the field).
  function request() {
    const parameters = {};
    for (const d of dims) {
      if (d.name() in parameters) throw new Error(`${d.name()} is in the search space twice`);
      parameters[d.name()] = d.dimension();
    }
    if (!dims.length) throw new Error("Add a setting to search over");
    const random = method.value === "random";
    const body = {
      ...labels.values(),
      base: settings.body(form),
      space: { method: method.value, order: order.value, parameters, ...(random ? numbersOf(form, ["trials"]) : {}) },
      ...numbersOf(form, ["max_concurrent"]),
    };
    if (!form.elements.space_seed.disabled && form.elements.space_seed.value !== "") body.space.seed = Number(form.elements.space_seed.value);
    if (early.checked) body.early_stopping = numbersOf(form, ["grace", "reduction_factor"]);
    return body;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.show(null);
    let body;
    try {
      body = request();
    } catch (e) {
      error.show(e);
      return;
    }
    submit.disabled = true;
    try {
      const accepted = await api.post("/sweeps", body);
      location.hash = `#/sweeps/${accepted.sweep_id}`;
    } catch (e) {
      error.show(e);
      submit.disabled = false;
    }
  });
  view.append(pageHead("New sweep"), card(null, form));
  await settings.load().catch((e) => e.name !== "AbortError" && error.show(e));
}

// ---- routing -------------------------------------------------------------------------

const ROUTES = [
  [/^#\/runs\/(run-[0-9a-f]+)$/, runPage, "runs"],
  [/^#\/runs$/, runsPage, "runs"],
  [/^#\/compare\/(run-[0-9a-f]+(?:,run-[0-9a-f]+)+)$/, comparePage, "runs"],
  [/^#\/sweeps\/(swp-[0-9a-f]+)$/, sweepPage, "sweeps"],
  [/^#\/sweeps$/, sweepsPage, "sweeps"],
  [/^#\/new-sweep$/, newSweepPage, "sweeps"],
  [/^#\/tokenizers$/, tokenizersPage, "tokenizers"],
  [/^#\/models$/, modelsPage, "models"],
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
