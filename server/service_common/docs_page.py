"""`/docs` without a CDN: a small page of our own that renders the OpenAPI document.

FastAPI's Swagger UI page loads its script and styles from a CDN, so it is blank where the
service has no way out to the internet (and it makes browsers fetch third-party code). No
package in our environment ships swagger-ui-dist's files, so rather than vendor them this
page is self-contained: HTML, CSS and one script, all served by the service (the API and
Data Bank alike), that list every route with its parameters, request body, answers and
schemas, and can send a request (with an `X-API-Key`) and show the answer. The full
document stays at `/openapi.json`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service_common.static_assets import StaticAsset

DOCS_PATH = "/docs"
SCRIPT_PATH = "/docs/docs.js"
STYLE_PATH = "/docs/docs.css"

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API docs</title>
<link rel="stylesheet" href="{style}">
</head>
<body>
<header><h1>{title}</h1>
<p>The <a href="{openapi}">OpenAPI document</a>, rendered without external assets.</p>
<label>X-API-Key <input id="api-key" type="password" autocomplete="off"></label>
</header>
<main id="routes" data-openapi="{openapi}">Loading the OpenAPI document...</main>
<script src="{script}"></script>
</body>
</html>
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1rem; }
details { border: 1px solid #ddd; border-radius: 4px; margin: .4rem 0; padding: .3rem .6rem; }
summary { cursor: pointer; font-family: monospace; font-size: 1rem; }
.method { display: inline-block; font-weight: bold; width: 4.5rem; }
.GET { color: #1a6; } .POST { color: #16a; } .DELETE { color: #a22; } .PUT { color: #a60; }
pre { background: #f6f6f6; overflow: auto; padding: .5rem; max-height: 30rem; }
textarea { font-family: monospace; width: 100%; min-height: 6rem; }
input.param { font-family: monospace; width: 20rem; }
h3 { font-size: .95rem; margin: .6rem 0 .2rem; }
"""

_SCRIPT = r"""
"use strict";
(function () {
  const main = document.getElementById("routes");
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  };
  const json = (value) => JSON.stringify(value, null, 2);
  function refName(schema) {
    return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
  }
  function jsonContent(holder) {
    return holder && holder.content && holder.content["application/json"];
  }
  function example(schema, doc, depth) {
    if (!schema || depth > 6) return null;
    const name = refName(schema);
    if (name) return example(doc.components.schemas[name], doc, depth + 1);
    if ("default" in schema) return schema.default;
    if (schema.anyOf) return example(schema.anyOf[0], doc, depth + 1);
    if (schema.enum) return schema.enum[0];
    if (schema.type === "object" || schema.properties) {
      const out = {};
      for (const key of schema.required || []) {
        out[key] = example(schema.properties[key], doc, depth + 1);
      }
      return out;
    }
    if (schema.type === "array") return [];
    if (schema.type === "integer" || schema.type === "number") return schema.minimum || 0;
    if (schema.type === "boolean") return false;
    return "";
  }
  function operation(doc, path, method, op) {
    const verb = method.toUpperCase();
    const body = el("div");
    if (op.description) body.append(el("p", {}, op.description));
    const inputs = {};
    const params = op.parameters || [];
    if (params.length) {
      body.append(el("h3", {}, "Parameters"));
      for (const p of params) {
        const pattern = (p.schema && p.schema.pattern) || "";
        const input = el("input", { class: "param", placeholder: pattern });
        inputs[p.name] = { input, where: p.in };
        const label = `${p.name} (${p.in}${p.required ? ", required" : ""}) `;
        body.append(el("div", {}, el("label", {}, label, input)));
      }
    }
    let bodyInput = null;
    const content = jsonContent(op.requestBody);
    if (content) {
      body.append(el("h3", {}, `Body: ${refName(content.schema) || "JSON"}`));
      bodyInput = el("textarea", {});
      bodyInput.value = json(example(content.schema, doc, 0));
      body.append(bodyInput);
    }
    body.append(el("h3", {}, "Answers"));
    for (const [status, answer] of Object.entries(op.responses || {})) {
      const media = jsonContent(answer);
      const name = refName(media && media.schema);
      const text = `${status}: ${answer.description || ""}`;
      body.append(el("div", {}, name ? `${text} (${name})` : text));
    }
    const output = el("pre", {});
    const send = el("button", { type: "button" }, "Send");
    send.addEventListener("click", async () => {
      let url = path;
      const query = new URLSearchParams();
      const headers = {};
      for (const [name, { input, where }] of Object.entries(inputs)) {
        if (!input.value) continue;
        if (where === "path") url = url.replace(`{${name}}`, encodeURIComponent(input.value));
        else if (where === "query") query.set(name, input.value);
        else if (where === "header") headers[name] = input.value;
      }
      const key = document.getElementById("api-key").value;
      if (key) headers["X-API-Key"] = key;
      const init = { method: verb, headers };
      if (bodyInput) { headers["Content-Type"] = "application/json"; init.body = bodyInput.value; }
      const qs = query.toString();
      output.textContent = "...";
      try {
        const response = await fetch(qs ? `${url}?${qs}` : url, init);
        const text = await response.text();
        let shown = text;
        try { shown = json(JSON.parse(text)); } catch (e) { /* not JSON */ }
        output.textContent = `${response.status} ${response.statusText}\n${shown}`;
      } catch (e) {
        output.textContent = String(e);
      }
    });
    body.append(send, output);
    const badge = el("span", { class: `method ${verb}` }, verb);
    const summary = el("summary", {}, badge, path, op.summary ? ` - ${op.summary}` : "");
    return el("details", {}, summary, body);
  }
  function render(doc) {
    main.textContent = "";
    if (doc.info && doc.info.description) main.append(el("p", {}, doc.info.description));
    for (const [path, ops] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(ops)) main.append(operation(doc, path, method, op));
    }
    const schemas = (doc.components && doc.components.schemas) || {};
    main.append(el("h2", {}, "Schemas"));
    for (const [name, schema] of Object.entries(schemas)) {
      main.append(el("details", {}, el("summary", {}, name), el("pre", {}, json(schema))));
    }
  }
  fetch(main.dataset.openapi)
    .then((r) => r.json())
    .then(render)
    .catch((e) => { main.textContent = `Cannot load the OpenAPI document: ${e}`; });
})();
"""


def docs_router(title: str, openapi_url: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    page = _HTML.format(title=title, style=STYLE_PATH, script=SCRIPT_PATH, openapi=openapi_url)
    assets = {
        DOCS_PATH: StaticAsset.text(page, ".html"),
        SCRIPT_PATH: StaticAsset.text(_SCRIPT, ".js"),
        STYLE_PATH: StaticAsset.text(_CSS, ".css"),
    }

    async def serve(request: Request) -> Response:
        return assets[request.url.path].response(request)

    for path in assets:
        router.add_api_route(path, serve, methods=["GET"])
    return router
