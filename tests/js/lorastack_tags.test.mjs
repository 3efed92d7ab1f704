// node --test tests/js/   (node's own runner; no packages). The file name must match node's test patterns
// (*.test.mjs): a directory run silently skips test_*.mjs.
import assert from "node:assert/strict";
import {createRequire} from "node:module";
import {describe, test} from "node:test";

const require = createRequire(import.meta.url);
const tags = require("../../javascript/lorastack-tags.js");
const {findLoraTags, loraTagAt, removeLoraTags, stepLoraStrength, formatStrength, removeCardFromPrompt,
    parseCardText, installLorastackTags} = tags;

const VECTOR17 = "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1";

// every form of docs/syntax.md, with the strengths a Ctrl+Up by 0.05 must give
const FORMS = [
    ["<lora:NAME>", "<lora:NAME:1.05>"],
    ["<lora:NAME:0.7>", "<lora:NAME:0.75>"],
    ["<lora:NAME:0.7:0.3>", "<lora:NAME:0.75:0.35>"],
    ["<lora:NAME:0.7:0.3:16>", "<lora:NAME:0.75:0.35:16>"],
    ["<lora:NAME:0.5:te=1>", "<lora:NAME:0.5:te=1.05>"],
    ["<lora:NAME:0.5:unet=0.2>", "<lora:NAME:0.55:unet=0.25>"],
    ["<lora:NAME:1:dyn=8>", "<lora:NAME:1.05:dyn=8>"],
    ["<lyco:NAME:0.6>", "<lyco:NAME:0.65>"],
    ["<lora:NAME:1:lbw=OUTALL>", "<lora:NAME:1.05:lbw=OUTALL>"],
    ["<lora:NAME:1:w=INS>", "<lora:NAME:1.05:w=INS>"],
    [`<lora:NAME:1:lbw=${VECTOR17}>`, `<lora:NAME:1.05:lbw=${VECTOR17}>`],
    ["<lora:NAME:1:lbw=1,R,U,X,X+0.5,0,0,0,0,0,0,0:x=0.3>", "<lora:NAME:1.05:lbw=1,R,U,X,X+0.5,0,0,0,0,0,0,0:x=0.3>"],
    ["<lora:NAME:1:lbwe=ATTNDEEPOFF>", "<lora:NAME:1.05:lbwe=ATTNDEEPOFF>"],
    ["<lora:NAME:1:start=5>", "<lora:NAME:1.05:start=5>"],
    ["<lora:NAME:1:stop=20>", "<lora:NAME:1.05:stop=20>"],
    ["<lora:NAME:1:step=5-20>", "<lora:NAME:1.05:step=5-20>"],
    ["<lora:NAME:1:OUTALL>", "<lora:NAME:1.05:OUTALL>"], // old LBW form: the preset place is not a strength
    ["<lora:NAME:0.8:OUTS:0.5>", "<lora:NAME:0.85:OUTS:0.5>"], // its x stays
    ["<lora:NAME:1:foo=2>", "<lora:NAME:1.05:foo=2>"],
    ["<lora:NAME:te=0.3:unet=0.9>", "<lora:NAME:te=0.35:unet=0.95>"],
    ["<lora:NAME:0.5:0.6:te=0.1>", "<lora:NAME:0.5:0.65:te=0.15>"],
    ["<lora:NAME:1:te=0.2:te=0.4>", "<lora:NAME:1:te=0.2:te=0.45>"], // the last repeat is the one that counts
    ["<lora:NAME:hr=0>", "<lora:NAME:1.05:hr=0>"],
];

describe("findLoraTags", () => {
    test("every documented form, lora and lyco, is found by name", () => {
        for (const [form] of FORMS) {
            const text = `masterpiece, ${form}, 1girl`;
            const found = findLoraTags(text, "NAME");
            assert.equal(found.length, 1, form);
            assert.equal(text.slice(found[0].start, found[0].end), form);
            assert.equal(found[0].kind, form.startsWith("<lyco") ? "lyco" : "lora");
        }
    });

    test("names are exact: case, spaces, dots, unicode, brackets", () => {
        const text = "<lora:Name:1> <lora: x :0.5> <lora:キャラ v1.5:1> <lora:my lora (anime) [best]:1> <lora:a=b=c:1>";
        assert.deepEqual(findLoraTags(text).map((t) => t.name),
            ["Name", " x ", "キャラ v1.5", "my lora (anime) [best]", "a=b=c"]);
        assert.equal(findLoraTags(text, "name").length, 0);
        assert.equal(findLoraTags(text, "x").length, 0); // the WebUI keeps the spaces in the name
        assert.equal(findLoraTags(text, " x ").length, 1);
    });

    test("other tags, broken tags and named-only arguments", () => {
        const text = "<hypernet:NAME:1> <LORA:NAME:1> <lora::1> <lora:te=1:NAME> <é:x> <lora:NAME:2";
        assert.deepEqual(findLoraTags(text).map((t) => t.name), ["NAME"]); // the name is the first positional
        assert.equal(findLoraTags("<lora:a:1><lora:a:2>", "a").length, 2);
        // the WebUI's \w is unicode-aware: "<é:" starts a tag that swallows up to the next ">"
        assert.equal(findLoraTags("<é:x <lora:a:1>", "a").length, 0);
    });
});

describe("loraTagAt: where the cursor counts as inside", () => {
    const text = "ab <lora:x:1:lbw=OUTALL> cd <hypernet:h:1>";
    const start = 3;
    const end = start + "<lora:x:1:lbw=OUTALL>".length;
    test("collapsed cursor", () => {
        assert.equal(loraTagAt(text, start, start), null); // before '<'
        assert.equal(loraTagAt(text, start + 1, start + 1).name, "x"); // just after '<'
        assert.equal(loraTagAt(text, end - 1, end - 1).name, "x"); // just before '>'
        assert.equal(loraTagAt(text, end, end), null); // after '>'
        assert.equal(loraTagAt(text, 1, 1), null);
        assert.equal(loraTagAt(text, text.length - 3, text.length - 3), null); // not a LoRA tag
    });
    test("selection", () => {
        assert.equal(loraTagAt(text, start + 6, start + 7).name, "x");
        assert.equal(loraTagAt(text, start, end).name, "x"); // the whole tag
        assert.equal(loraTagAt(text, 0, start + 4), null); // starts outside
        assert.equal(loraTagAt(text, start + 4, end + 2), null); // ends outside
    });
});

describe("removeLoraTags: the tag goes, and only the separator it leaves", () => {
    // the same table as tests/test_rewrite.py (the Python side must agree)
    const CASES = [
        ["a, <lora:x:1>, b", "a, b"],
        ["a <lora:x:1> b", "a b"],
        ["a,<lora:x:1>,b", "a,b"],
        ["<lora:x:1>, a", "a"],
        ["<lora:x:1> a", "a"],
        ["a, <lora:x:1>", "a"],
        ["a <lora:x:1>", "a"],
        ["a, b <lora:x:1>, c", "a, b, c"],
        ["a, <lora:x:1> b", "a, b"],
        ["<lora:x:1>", ""],
        ["(<lora:x:1>, red:1.2)", "(red:1.2)"],
        ["(red, <lora:x:1>:1.2)", "(red, :1.2)"],
        ["(red, <lora:x:1>)", "(red)"],
        ["[<lora:x:1> red]", "[red]"],
        ["{a|<lora:x:1>, b}", "{a|b}"],
        ["a BREAK <lora:x:1>, b", "a BREAK b"],
        ["a, <lora:x:1> BREAK b", "a BREAK b"],
        ["a, <lora:x:1>BREAK b", "a BREAK b"],
        ["a BREAK <lora:x:1>", "a BREAK"],
        ["line one,\n<lora:x:1>, line two", "line one,\nline two"],
        ["line one, <lora:x:1>\nline two", "line one\nline two"],
        ["a,\n<lora:x:1>\nb", "a,\n\nb"],
        ["a,  <lora:x:1>,  b", "a,  b"],
        ["a <lora:x:1> , b", "a , b"],
        ["a\t<lora:x:1>\tb", "a\tb"],
        ["a, <lora:x:1> <lora:x:0.5>, b", "a, b"],
        ["masterpiece, best quality, <lora:x:1>, <lora:y:1>", "masterpiece, best quality, <lora:y:1>"],
        ["<lora<lora:x:1>:y:1>", "<lora :y:1>"],
        ["a, <lyco:x:0.5:0.2:lbw=OUTALL:start=3>, b", "a, b"],
    ];
    for (const [before, after] of CASES) {
        test(JSON.stringify(before), () => {
            const result = removeLoraTags(before, "x");
            assert.equal(result.text, after);
            assert.equal(findLoraTags(result.text, "x").length, 0);
        });
    }
    test("nothing to remove", () => {
        assert.deepEqual(removeLoraTags("a, <lora:y:1>", "x"), {text: "a, <lora:y:1>", removed: 0, position: -1});
    });
    test("every form of the name goes, the rest is untouched", () => {
        const text = FORMS.map(([f]) => f).join(", ") + ", <lora:other:1:lbw=INS>";
        assert.equal(removeLoraTags(text, "NAME").text, "<lora:other:1:lbw=INS>");
    });
});

describe("stepLoraStrength (Ctrl+Up/Down)", () => {
    test("every documented form: TE, and UNet when written separately; nothing else", () => {
        for (const [form, up] of FORMS) {
            const text = `a, ${form}, b`;
            const result = stepLoraStrength(text, 5, 5, 0.05);
            assert.equal(result.text, `a, ${up}, b`, form);
            assert.equal(result.changed, true);
            const down = stepLoraStrength(result.text, 5, 5, -0.05);
            const expectedBack = form === "<lora:NAME>" ? "a, <lora:NAME:1>, b" : text;
            const hr = form === "<lora:NAME:hr=0>" ? "a, <lora:NAME:1:hr=0>, b" : expectedBack;
            assert.equal(down.text, hr, `down again: ${form}`);
        }
    });

    test("the new selection covers the TE number", () => {
        const r = stepLoraStrength("x <lora:n:0.5:unet=0.2> y", 4, 4, 0.1);
        assert.equal(r.text, "x <lora:n:0.6:unet=0.3> y");
        assert.equal(r.text.slice(r.selectionStart, r.selectionEnd), "0.6");
        const named = stepLoraStrength("<lora:n:0.3:0.9:te=0.1>", 2, 2, 0.1);
        assert.equal(named.text, "<lora:n:0.3:1:te=0.2>");
        assert.equal(named.text.slice(named.selectionStart, named.selectionEnd), "0.2");
        const inserted = stepLoraStrength("<lora:n:hr=0>", 2, 2, 0.1);
        assert.equal(inserted.text, "<lora:n:1.1:hr=0>");
        assert.equal(inserted.text.slice(inserted.selectionStart, inserted.selectionEnd), "1.1");
        // a second press with that selection steps again
        const again = stepLoraStrength(inserted.text, inserted.selectionStart, inserted.selectionEnd, 0.1);
        assert.equal(again.text, "<lora:n:1.2:hr=0>");
    });

    test("precision and float noise", () => {
        assert.equal(stepLoraStrength("<lora:n:0.1>", 2, 2, 0.2).text, "<lora:n:0.3>"); // not 0.30000000000000004
        assert.equal(stepLoraStrength("<lora:n:1>", 2, 2, 0.01).text, "<lora:n:1.01>");
        assert.equal(stepLoraStrength("<lora:n:1>", 2, 2, 0.25).text, "<lora:n:1.25>");
        assert.equal(stepLoraStrength("<lora:n:0.73>", 2, 2, 0.05).text, "<lora:n:0.78>");
        assert.equal(stepLoraStrength("<lora:n:1e-3>", 2, 2, 0.001).text, "<lora:n:0.002>");
        assert.equal(stepLoraStrength("<lora:n:.5>", 2, 2, 0.1).text, "<lora:n:0.6>");
        assert.equal(stepLoraStrength("<lora:n:+1>", 2, 2, 0.1).text, "<lora:n:1.1>");
    });

    test("negative numbers and crossing zero", () => {
        assert.equal(stepLoraStrength("<lora:n:-0.5>", 2, 2, -0.05).text, "<lora:n:-0.55>");
        assert.equal(stepLoraStrength("<lora:n:-0.5:0.5>", 2, 2, 0.5).text, "<lora:n:0:1>");
        assert.equal(stepLoraStrength("<lora:n:0.05>", 2, 2, -0.05).text, "<lora:n:0>"); // never "-0"
        assert.equal(stepLoraStrength("<lora:n:0>", 2, 2, -0.05).text, "<lora:n:-0.05>");
        assert.equal(stepLoraStrength("<lora:n:-1.5:te=-2>", 2, 2, 0.5).text, "<lora:n:-1.5:te=-1.5>");
    });

    test("spacing inside arguments is kept", () => {
        assert.equal(stepLoraStrength("<lora: n : 0.5 : 0.2 >", 3, 3, 0.1).text, "<lora: n : 0.6 : 0.3 >");
        assert.equal(stepLoraStrength("<lora:n:te= 0.5 >", 3, 3, 0.1).text, "<lora:n:te= 0.6 >");
    });

    test("the cursor position picks the tag", () => {
        const text = "<lora:a:1> <lora:b:1:lbw=OUTALL>";
        assert.equal(stepLoraStrength(text, 3, 3, 0.1).text, "<lora:a:1.1> <lora:b:1:lbw=OUTALL>");
        assert.equal(stepLoraStrength(text, 14, 14, 0.1).text, "<lora:a:1> <lora:b:1.1:lbw=OUTALL>");
        assert.equal(stepLoraStrength(text, 10, 10, 0.1), null); // after the first '>': not inside
        assert.equal(stepLoraStrength(text, 11, 11, 0.1), null); // before the second '<'
        assert.equal(stepLoraStrength(text, text.length - 1, text.length - 1, 0.1).text,
            "<lora:a:1> <lora:b:1.1:lbw=OUTALL>"); // just before the last '>'
    });

    test("not a LoRA tag: null, the WebUI's handler takes the key", () => {
        assert.equal(stepLoraStrength("(red:1.2)", 2, 2, 0.1), null);
        assert.equal(stepLoraStrength("<hypernet:h:1>", 2, 2, 0.1), null);
        assert.equal(stepLoraStrength("plain", 2, 2, 0.1), null);
        assert.equal(stepLoraStrength("<lora:x:1", 2, 2, 0.1), null); // no closing '>'
    });

    test("a LoRA tag that cannot be stepped is claimed and left alone", () => {
        for (const text of ["<lora:x:0.8x>", "<lora::1>", "<lora:x:nan>", "<lora:x:1:unet=q>", "<lora:x:te=>"]) {
            const r = stepLoraStrength(text, 2, 2, 0.1);
            assert.deepEqual(r, {text, selectionStart: 2, selectionEnd: 2, changed: false}, text);
        }
    });

    test("formatStrength", () => {
        assert.equal(formatStrength(1), "1");
        assert.equal(formatStrength(0.1 + 0.2), "0.3");
        assert.equal(formatStrength(-0), "0");
        assert.equal(formatStrength(-1e-13), "-1e-13");
    });
});

describe("card clicks", () => {
    test("parseCardText", () => {
        assert.deepEqual(parseCardText("<lora:my lora:0.8> sks style"), {kind: "lora", name: "my lora", extra: " sks style"});
        assert.equal(parseCardText("<hypernet:h:1>"), null);
        assert.equal(parseCardText("embedding_name"), null);
        assert.equal(parseCardText(undefined), null);
    });

    test("a tag of any form is removed, with the activation text that follows it", () => {
        const card = "<lora:x:1> sks style";
        const cases = [
            ["1girl, <lora:x:1:lbw=OUTALL> sks style, red", "1girl, red"],
            ["1girl <lora:x:0.5:0.2> sks style", "1girl"],
            ["1girl, <lyco:x:1:start=3>, red", "1girl, red"],
            ["<lora:x:1:lbw=OUTALL>, sks style, red", "sks style, red"], // not directly after: the user's text
            ["<lora:x:1> sks styles, red", "sks styles, red"], // not the whole words
            ["a <lora:x:1:hr=0> b <lora:x:0.2> sks style", "a b"],
            ["a, <lora:x:1>", "a"], // the plain form too
        ];
        for (const [before, after] of cases) {
            assert.equal(removeCardFromPrompt(before, card).text, after, before);
        }
    });

    test("no tag of that LoRA, or not a LoRA card: null (the WebUI adds)", () => {
        assert.equal(removeCardFromPrompt("1girl, <lora:xy:1>", "<lora:x:1>"), null);
        assert.equal(removeCardFromPrompt("1girl, <lora:X:1>", "<lora:x:1>"), null);
        assert.equal(removeCardFromPrompt("<hypernet:x:1>", "<hypernet:x:1>"), null);
        assert.equal(removeCardFromPrompt("<lora:x:1>", "x"), null);
    });
});

// ------------------------------------------------------------------------------------------------------ glue

function fakeTextarea(value) {
    const listeners = {};
    return {
        value, selectionStart: 0, selectionEnd: 0, listeners,
        addEventListener(type, fn) {
            (listeners[type] ||= []).push(fn);
        },
    };
}

function keydown(textarea, props) {
    const event = {
        ctrlKey: true, metaKey: false, key: "ArrowUp", currentTarget: textarea, target: textarea,
        prevented: false, stopped: false,
        preventDefault() {
            this.prevented = true;
        },
        stopPropagation() {
            this.stopped = true;
        },
        ...props,
    };
    for (const fn of textarea.listeners.keydown || []) fn(event);
    return event;
}

function fakePage(prompt, negative, extra = {}) {
    const areas = {
        "#txt2img_prompt > label > textarea": fakeTextarea(prompt),
        "#txt2img_neg_prompt > label > textarea": fakeTextarea(negative),
    };
    const root = {
        querySelector: (selector) => areas[selector] || null,
        querySelectorAll: () => Object.values(areas),
    };
    const calls = {original: [], updateInput: [], tryRemove: []};
    const loaded = [];
    const env = {
        opts: {keyedit_precision_extra: 0.1},
        gradioApp: () => root,
        updateInput: (ta) => calls.updateInput.push(ta),
        cardClicked: (...args) => calls.original.push(args),
        tryToRemoveExtraNetworkFromPrompt: (ta, text, isNeg) => {
            calls.tryRemove.push([ta, text, isNeg]);
            const found = ta.value.includes(text);
            ta.value = ta.value.replace(text, "");
            return found;
        },
        onUiLoaded: (fn) => loaded.push(fn),
        ...extra,
    };
    return {env, calls, loaded, prompt: areas["#txt2img_prompt > label > textarea"],
        negative: areas["#txt2img_neg_prompt > label > textarea"]};
}

describe("glue", () => {
    test("Ctrl+Up inside a LoRA tag: handled, propagation stopped, input event sent", () => {
        const page = fakePage("a, <lora:x:1:lbw=OUTALL>, b", "");
        assert.equal(installLorastackTags(page.env), true);
        page.prompt.selectionStart = page.prompt.selectionEnd = 6;
        const event = keydown(page.prompt, {key: "ArrowUp"});
        assert.equal(page.prompt.value, "a, <lora:x:1.1:lbw=OUTALL>, b");
        assert.ok(event.prevented && event.stopped);
        assert.deepEqual(page.calls.updateInput, [page.prompt]);
        const down = keydown(page.prompt, {key: "ArrowDown", ctrlKey: false, metaKey: true});
        assert.equal(page.prompt.value, "a, <lora:x:1:lbw=OUTALL>, b");
        assert.ok(down.stopped);
    });

    test("everything else is left to the WebUI (no stopPropagation)", () => {
        const page = fakePage("(red:1.2), <hypernet:h:1>, <lora:x:1>", "");
        installLorastackTags(page.env);
        for (const [position, props] of [[2, {}], [14, {}], [30, {ctrlKey: false}], [30, {key: "ArrowLeft"}]]) {
            page.prompt.selectionStart = page.prompt.selectionEnd = position;
            const event = keydown(page.prompt, props);
            assert.ok(!event.stopped && !event.prevented, `${position} ${JSON.stringify(props)}`);
        }
        assert.equal(page.prompt.value, "(red:1.2), <hypernet:h:1>, <lora:x:1>");
        assert.deepEqual(page.calls.updateInput, []);
    });

    test("a broken LoRA tag is claimed but not changed", () => {
        const page = fakePage("<lora:x:0.8x>", "");
        installLorastackTags(page.env);
        page.prompt.selectionStart = page.prompt.selectionEnd = 3;
        const event = keydown(page.prompt, {});
        assert.ok(event.stopped);
        assert.equal(page.prompt.value, "<lora:x:0.8x>");
        assert.deepEqual(page.calls.updateInput, []);
    });

    test("the step is opts.keyedit_precision_extra, 0.05 when missing or bad", () => {
        for (const [opts, expected] of [[{keyedit_precision_extra: 0.01}, "<lora:x:1.01>"], [{}, "<lora:x:1.05>"],
            [undefined, "<lora:x:1.05>"], [{keyedit_precision_extra: "x"}, "<lora:x:1.05>"],
            [{keyedit_precision_extra: -1}, "<lora:x:1.05>"]]) {
            const page = fakePage("<lora:x:1>", "", {opts});
            installLorastackTags(page.env);
            page.prompt.selectionStart = page.prompt.selectionEnd = 3;
            keydown(page.prompt, {});
            assert.equal(page.prompt.value, expected, JSON.stringify(opts));
        }
    });

    test("card click removes a tag of any form; without one the WebUI's cardClicked runs", () => {
        const page = fakePage("1girl, <lora:x:1:lbw=OUTALL> sks, red", "(ugly:1), bad");
        installLorastackTags(page.env);
        page.env.cardClicked("txt2img", "<lora:x:1> sks", "(ugly:1)", false);
        assert.equal(page.prompt.value, "1girl, red");
        assert.equal(page.negative.value, ", bad"); // the WebUI's own remover, only asked to remove
        assert.deepEqual(page.calls.original, []);
        assert.deepEqual(page.calls.tryRemove.map((c) => c[2]), [true]);
        page.env.cardClicked("txt2img", "<lora:x:1> sks", "", false);
        assert.deepEqual(page.calls.original, [["txt2img", "<lora:x:1> sks", "", false]]);
        page.env.cardClicked("txt2img", "<hypernet:x:1>", "", false);
        assert.equal(page.calls.original.length, 2);
    });

    test("card click uses the last focused box when the negative prompt is allowed", () => {
        const page = fakePage("a", "b, <lora:x:1:lbw=INS>");
        page.env.activePromptTextarea = {txt2img: page.negative};
        installLorastackTags(page.env);
        page.env.cardClicked("txt2img", "<lora:x:1>", "", true);
        assert.equal(page.negative.value, "b");
        assert.equal(page.prompt.value, "a");
    });

    test("cardClicked defined after the script: wrapped when the UI has loaded; never twice", () => {
        const page = fakePage("<lora:x:1:w=INS>", "");
        const original = page.env.cardClicked;
        delete page.env.cardClicked;
        installLorastackTags(page.env);
        assert.equal(page.env.cardClicked, undefined);
        page.env.cardClicked = original;
        page.loaded.forEach((fn) => fn());
        page.loaded.forEach((fn) => fn());
        assert.ok(page.env.cardClicked.__lorastack);
        assert.equal(page.env.cardClicked.original, original);
        assert.equal(installLorastackTags(page.env), false);
        assert.equal(page.prompt.listeners.keydown.length, 1);
        page.env.cardClicked("txt2img", "<lora:x:1>", "", false);
        assert.equal(page.prompt.value, "");
    });

    test("defensive: missing WebUI functions and elements do nothing and throw nothing", () => {
        assert.equal(installLorastackTags(undefined), false);
        assert.equal(installLorastackTags({}), true);
        assert.equal(installLorastackTags({gradioApp: () => null, cardClicked: "nope"}), true);
        const errors = [];
        const page = fakePage("<lora:x:1>", "", {
            updateInput: undefined,
            console: {error: (...a) => errors.push(a)},
        });
        page.env.gradioApp = () => ({querySelectorAll: () => [page.prompt], querySelector: () => null});
        installLorastackTags(page.env);
        page.prompt.selectionStart = page.prompt.selectionEnd = 3;
        keydown(page.prompt, {});
        assert.equal(page.prompt.value, "<lora:x:1.1>"); // no updateInput and no Event: value set anyway
        page.env.cardClicked("txt2img", "<lora:x:1>", "", false); // no prompt box found: the WebUI decides
        assert.equal(page.calls.original.length, 1);
        assert.deepEqual(errors, []);
    });
});
