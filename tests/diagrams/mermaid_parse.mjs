// Checks mermaid texts with mermaid's own parser, under Node, without a browser.
//
//   node mermaid_parse.mjs NODE_MODULES < texts.json
//
// NODE_MODULES is the folder where the npm packages `mermaid` and `jsdom` are installed
// (.ci/run installs them into .mermaid/node_modules). stdin is a JSON array of diagram texts;
// stdout is a JSON array with, for each text, {"ok": true, "type": <diagram type>} or
// {"ok": false, "error": <mermaid's message>}. mermaid's sanitizer wants a DOM: jsdom gives it one.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const modules = resolve(process.argv[2]);
const require = createRequire(join(modules, "noop.js"));
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);

const { JSDOM } = await load("jsdom");
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await load("mermaid");
mermaid.initialize({ startOnLoad: false });

const texts = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const text of texts) {
  try {
    const parsed = await mermaid.parse(text);
    results.push({ ok: true, type: parsed.diagramType });
  } catch (error) {
    results.push({ ok: false, error: String(error && error.message ? error.message : error) });
  }
}
process.stdout.write(JSON.stringify(results));
