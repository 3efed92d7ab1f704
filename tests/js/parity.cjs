// Helper for tests/test_js_tags.py (not a test file: node --test skips it). Reads a JSON list of operations on
// stdin, writes the results of javascript/lorastack-tags.js as JSON on stdout.
"use strict";
const tags = require("../../javascript/lorastack-tags.js");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
    const results = JSON.parse(input).map((op) => {
        if (op.op === "remove") return tags.removeLoraTags(op.text, op.name).text;
        if (op.op === "names") return tags.findLoraTags(op.text).map((t) => t.name);
        if (op.op === "step") {
            const r = tags.stepLoraStrength(op.text, op.position, op.position, op.delta);
            return r && {text: r.text, changed: r.changed};
        }
        throw new Error(`unknown op ${op.op}`);
    });
    process.stdout.write(JSON.stringify(results));
});
