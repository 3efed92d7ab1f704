/*
 * lorastack: LoRA tag tools for the WebUI's prompt boxes.
 *
 * The WebUI's own tools only know the plain <lora:NAME:NUMBER> form:
 *  - a Lora card click removes a tag only when it is exactly <lora:NAME:NUMBER>, so a tag with lbw=, a second
 *    strength or a schedule is not found and the click inserts a duplicate;
 *  - Ctrl+Up/Down inside <...> changes the number after the LAST colon, so <lora:x:1:lbw=OUTALL> is not changed.
 * Here: pure functions that read tags exactly as the server does (lib_lorastack/syntax: the tag regex
 * <(\w+):([^>]+)>, arguments split on ':', an argument with exactly one '=' is named, the name is the first
 * positional argument), and glue that hooks them into the page. The glue steps aside (calls the WebUI) for
 * everything that is not a <lora:...>/<lyco:...> tag.
 */
(function () {
    "use strict";

    var LORA_KINDS = ["lora", "lyco"];
    var TAG_SOURCE = "<([\\p{L}\\p{N}_]+):([^>]+)>"; // Python's \w is unicode-aware; JavaScript's needs \p{...}
    var NUMBER_RE = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
    var SPACE_AT_END_RE = /[^\S\r\n]*$/; // spaces on one line (every whitespace but line ends)
    var SPACE_AT_START_RE = /^[^\S\r\n]*/;
    var BREAK_AT_END_RE = /(?<![\p{L}\p{N}_])BREAK$/u;
    var BREAK_AT_START_RE = /^BREAK(?![\p{L}\p{N}_])/u;
    var WORD_CHAR_RE = /^[\p{L}\p{N}_]$/u;
    var OPENERS = "\n\r([{|";
    var CLOSERS = "\n\r)]}|";
    var DEFAULT_STEP = 0.05; // the WebUI's default keyedit_precision_extra
    var PROMPT_TEXTAREAS = [
        "#txt2img_prompt textarea",
        "#txt2img_neg_prompt textarea",
        "#img2img_prompt textarea",
        "#img2img_neg_prompt textarea",
    ].join(", ");

    function tagRegExp() {
        return new RegExp(TAG_SOURCE, "gu");
    }

    function splitArgs(body, bodyStart) {
        var args = [];
        var start = bodyStart;
        body.split(":").forEach(function (piece) {
            var parts = piece.split("=");
            var named = parts.length === 2;
            args.push({
                text: piece,
                start: start,
                end: start + piece.length,
                key: named ? parts[0] : null,
                valueStart: named ? start + parts[0].length + 1 : start,
            });
            start += piece.length + 1;
        });
        return args;
    }

    /** Every extra-network tag of the text: {kind, name, start, end, args}; name is null when there is none. */
    function parseTags(text) {
        var tags = [];
        var re = tagRegExp();
        var m;
        while ((m = re.exec(text)) !== null) {
            var args = splitArgs(m[2], m.index + m[1].length + 2);
            var positional = args.filter(function (a) {
                return a.key === null;
            });
            var name = positional.length && positional[0].text !== "" ? positional[0].text : null;
            tags.push({kind: m[1], name: name, start: m.index, end: m.index + m[0].length, args: args});
        }
        return tags;
    }

    /** The <lora:...>/<lyco:...> tags of the text, of any form; only those of `name` (exact) when given. */
    function findLoraTags(text, name) {
        return parseTags(String(text)).filter(function (tag) {
            return LORA_KINDS.indexOf(tag.kind) >= 0 && tag.name !== null && (name == null || tag.name === name);
        });
    }

    /**
     * The LoRA tag the cursor is inside, as the WebUI decides "inside <...>": after '<' and up to '>'. A selection
     * must lie within one tag. Tags without a name count too (the key is claimed, the tag left alone).
     */
    function loraTagAt(text, selectionStart, selectionEnd) {
        if (selectionEnd == null) selectionEnd = selectionStart;
        var tags = parseTags(String(text));
        for (var i = 0; i < tags.length; i++) {
            var tag = tags[i];
            if (LORA_KINDS.indexOf(tag.kind) < 0) continue;
            var inside = selectionStart === selectionEnd
                ? tag.start < selectionStart && selectionStart < tag.end
                : tag.start <= selectionStart && selectionStart < tag.end && selectionEnd <= tag.end;
            if (inside) return tag;
        }
        return null;
    }

    function isWordChar(ch) {
        return ch !== undefined && ch !== "" && WORD_CHAR_RE.test(ch);
    }

    /**
     * Remove text[start:end] and the separator that would be left dangling (the same rules as the Python side,
     * lib_lorastack/syntax/rewrite.py _cut): at the end of a line or group the separator before it goes, at the
     * start of one the separator after it, between two items one of the two. Returns {text, position}.
     */
    function removeSpanTidy(text, start, end) {
        var left = text.slice(0, start);
        var right = text.slice(end);
        var leftSpace = left.match(SPACE_AT_END_RE)[0];
        var leftCore = left.slice(0, left.length - leftSpace.length);
        var rightSpace = right.match(SPACE_AT_START_RE)[0];
        var rightCore = right.slice(rightSpace.length);
        var atGroupEnd = rightCore === "" || CLOSERS.indexOf(rightCore[0]) >= 0 || BREAK_AT_START_RE.test(rightCore);
        var atGroupStart = leftCore === "" || OPENERS.indexOf(leftCore[leftCore.length - 1]) >= 0 ||
            BREAK_AT_END_RE.test(leftCore);
        var middle;
        if (atGroupEnd) {
            if (leftCore.endsWith(",")) leftCore = leftCore.slice(0, -1).replace(SPACE_AT_END_RE, "");
            middle = rightSpace;
            if (!middle && isWordChar(leftCore[leftCore.length - 1]) && BREAK_AT_START_RE.test(rightCore)) {
                middle = leftSpace || " ";
            }
        } else if (atGroupStart) {
            if (rightCore.startsWith(",")) rightCore = rightCore.slice(1).replace(SPACE_AT_START_RE, "");
            middle = leftSpace;
            if (!middle && isWordChar(rightCore[0]) && BREAK_AT_END_RE.test(leftCore)) middle = rightSpace || " ";
        } else if (rightCore.startsWith(",")) {
            if (leftCore.endsWith(",")) leftCore = leftCore.slice(0, -1).replace(SPACE_AT_END_RE, "");
            middle = rightSpace;
        } else {
            middle = leftSpace || rightSpace;
        }
        var joined = leftCore + middle + rightCore;
        var junction = leftCore.length;
        var crossing = parseTags(joined).some(function (tag) {
            return (tag.start < junction && junction < tag.end) ||
                (tag.start < junction + middle.length && junction + middle.length < tag.end);
        });
        if (crossing) joined = leftCore + " " + middle + rightCore; // the halves must not fuse into a new tag
        return {text: joined, position: junction};
    }

    /** Remove every tag of LoRA `name` with tidy separators: {text, removed (count), position}. */
    function removeLoraTags(text, name) {
        var tags = findLoraTags(text, name);
        var position = -1;
        for (var i = tags.length - 1; i >= 0; i--) {
            var cut = removeSpanTidy(text, tags[i].start, tags[i].end);
            text = cut.text;
            position = cut.position;
        }
        return {text: text, removed: tags.length, position: position};
    }

    /** A strength as the WebUI writes it after a step (12 significant digits), without a needless ".0". */
    function formatStrength(value) {
        var rounded = parseFloat(value.toPrecision(12));
        if (rounded === 0) rounded = 0; // no "-0"
        return String(rounded);
    }

    function numberIn(text, arg) {
        var value = text.slice(arg.valueStart, arg.end);
        var lead = value.length - value.replace(/^\s+/, "").length;
        var core = value.trim();
        if (!NUMBER_RE.test(core)) return null;
        return {start: arg.valueStart + lead, end: arg.valueStart + lead + core.length, value: parseFloat(core)};
    }

    /**
     * Ctrl+Up/Down on the LoRA tag around the cursor: the TE strength (te= when written, else the first number)
     * moves by `delta`, and the UNet strength too when it is written separately (the second number or unet=);
     * every other argument stays. <lora:x> becomes <lora:x:1+delta>.
     * Returns null when the cursor is not inside a LoRA tag (leave the key to the WebUI), else
     * {text, selectionStart, selectionEnd, changed}; the new selection covers the TE number.
     */
    function stepLoraStrength(text, selectionStart, selectionEnd, delta) {
        var tag = loraTagAt(text, selectionStart, selectionEnd);
        if (!tag) return null;
        var unchanged = {text: text, selectionStart: selectionStart, selectionEnd: selectionEnd, changed: false};
        if (tag.name === null || !isFinite(delta)) return unchanged;
        var positional = [];
        var named = {};
        tag.args.forEach(function (a) {
            if (a.key === null) positional.push(a);
            else named[a.key] = a; // the last repeat counts, as in the WebUI
        });
        var edits = [];
        var teArg = named.te || positional[1] || null;
        var te = null;
        if (teArg) {
            te = numberIn(text, teArg);
            if (!te) return unchanged;
            edits.push({start: te.start, end: te.end, text: formatStrength(te.value + delta), te: true});
        } else {
            var at = positional[0].end;
            edits.push({start: at, end: at, prefix: ":", text: formatStrength(1 + delta), te: true});
        }
        var unetArg = named.unet || null;
        if (unetArg) {
            var unet = numberIn(text, unetArg);
            if (!unet) return unchanged;
            edits.push({start: unet.start, end: unet.end, text: formatStrength(unet.value + delta)});
        } else if (positional[2]) {
            var second = numberIn(text, positional[2]); // not a number: the old LBW preset place, left alone
            if (second) edits.push({start: second.start, end: second.end, text: formatStrength(second.value + delta)});
        }
        edits.sort(function (a, b) {
            return a.start - b.start;
        });
        var out = "";
        var last = 0;
        var selStart = selectionStart;
        var selEnd = selectionEnd;
        edits.forEach(function (edit) {
            out += text.slice(last, edit.start) + (edit.prefix || "");
            if (edit.te) {
                selStart = out.length;
                selEnd = out.length + edit.text.length;
            }
            out += edit.text;
            last = edit.end;
        });
        out += text.slice(last);
        return {text: out, selectionStart: selStart, selectionEnd: selEnd, changed: out !== text};
    }

    /** The LoRA tag a card inserts ("<lora:NAME:W> activation text"): {kind, name, extra} or null. */
    function parseCardText(textToAdd) {
        if (typeof textToAdd !== "string") return null;
        var tags = parseTags(textToAdd);
        if (!tags.length || tags[0].start !== 0 || LORA_KINDS.indexOf(tags[0].kind) < 0 || tags[0].name === null) {
            return null;
        }
        return {kind: tags[0].kind, name: tags[0].name, extra: textToAdd.slice(tags[0].end)};
    }

    /**
     * The second click of a Lora card: remove every tag of the card's LoRA, in any form (lora or lyco), and the
     * card's activation text where it directly follows a removed tag (as the WebUI does). null when the prompt
     * has no tag of that LoRA (then the WebUI adds one) or when the card is not a LoRA card.
     */
    function removeCardFromPrompt(text, textToAdd) {
        var card = parseCardText(textToAdd);
        if (!card) return null;
        var tags = findLoraTags(text, card.name);
        if (!tags.length) return null;
        var extra = card.extra.trim();
        for (var i = tags.length - 1; i >= 0; i--) {
            var end = tags[i].end;
            if (extra) {
                var after = text.slice(end);
                var gap = after.match(SPACE_AT_START_RE)[0];
                var follows = after.slice(gap.length, gap.length + extra.length) === extra &&
                    !(isWordChar(extra[extra.length - 1]) && isWordChar(after[gap.length + extra.length]));
                if (follows) end += gap.length + extra.length;
            }
            text = removeSpanTidy(text, tags[i].start, end).text;
        }
        return {text: text, removed: tags.length};
    }

    /* ------------------------------------------------------------------------------------------- page glue */

    function installLorastackTags(env) {
        if (!env || env.__lorastackTagsInstalled) return false;
        env.__lorastackTagsInstalled = true;

        function app() {
            if (typeof env.gradioApp === "function") return env.gradioApp();
            return env.document || null;
        }

        function step() {
            var p = env.opts ? Number(env.opts.keyedit_precision_extra) : NaN;
            return isFinite(p) && p > 0 ? p : DEFAULT_STEP;
        }

        function changed(textarea) {
            if (typeof env.updateInput === "function") {
                env.updateInput(textarea);
            } else if (typeof textarea.dispatchEvent === "function" && typeof env.Event === "function") {
                textarea.dispatchEvent(new env.Event("input", {bubbles: true}));
            }
        }

        function onKeydown(event) {
            if (!(event.ctrlKey || event.metaKey)) return;
            var up = event.key === "ArrowUp";
            if (!up && event.key !== "ArrowDown") return;
            var textarea = event.currentTarget || event.target;
            if (!textarea || typeof textarea.value !== "string") return;
            var result;
            try {
                result = stepLoraStrength(textarea.value, textarea.selectionStart, textarea.selectionEnd,
                    up ? step() : -step());
            } catch (err) {
                if (env.console) env.console.error("lorastack: Ctrl+Up/Down failed", err);
                return; // the WebUI's handler takes the key
            }
            if (!result) return; // not inside a LoRA tag: the WebUI's handler takes the key
            event.preventDefault();
            event.stopPropagation(); // the WebUI's handler listens on window: it must not edit the tag again
            if (!result.changed) return;
            textarea.value = result.text;
            textarea.selectionStart = result.selectionStart;
            textarea.selectionEnd = result.selectionEnd;
            changed(textarea);
        }

        function bindTextareas() {
            var root = app();
            if (!root || typeof root.querySelectorAll !== "function") return;
            var list = root.querySelectorAll(PROMPT_TEXTAREAS);
            for (var i = 0; i < list.length; i++) {
                var textarea = list[i];
                if (textarea.__lorastackKeydown || typeof textarea.addEventListener !== "function") continue;
                textarea.addEventListener("keydown", onKeydown);
                textarea.__lorastackKeydown = true;
            }
        }

        function cardToggleOff(tabname, textToAdd, textToAddNegative, allowNegativePrompt) {
            var root = app();
            if (!root || typeof root.querySelector !== "function") return false;
            var promptArea = root.querySelector("#" + tabname + "_prompt > label > textarea");
            var hasNegative = typeof textToAddNegative === "string" && textToAddNegative.length > 0;
            var textarea = promptArea;
            if (!hasNegative && allowNegativePrompt && env.activePromptTextarea && env.activePromptTextarea[tabname]) {
                textarea = env.activePromptTextarea[tabname]; // the box the user last focused, as the WebUI picks
            }
            if (!textarea || typeof textarea.value !== "string") return false;
            var result = removeCardFromPrompt(textarea.value, textToAdd);
            if (!result) return false;
            textarea.value = result.text;
            changed(textarea);
            if (hasNegative && typeof env.tryToRemoveExtraNetworkFromPrompt === "function") {
                var negative = root.querySelector("#" + tabname + "_neg_prompt > label > textarea");
                // remove the card's negative text if it is there; never add it on a removing click
                if (negative && env.tryToRemoveExtraNetworkFromPrompt(negative, textToAddNegative, true)) {
                    changed(negative);
                }
            }
            return true;
        }

        function wrapCardClicked() {
            var original = env.cardClicked;
            if (typeof original !== "function" || original.__lorastack) return;
            var wrapped = function (tabname, textToAdd, textToAddNegative, allowNegativePrompt) {
                try {
                    if (cardToggleOff(tabname, textToAdd, textToAddNegative, allowNegativePrompt)) return undefined;
                } catch (err) {
                    if (env.console) env.console.error("lorastack: card click failed", err);
                }
                return original.apply(this, arguments);
            };
            wrapped.__lorastack = true;
            wrapped.original = original;
            env.cardClicked = wrapped;
        }

        function setup() {
            try {
                wrapCardClicked();
                bindTextareas();
            } catch (err) {
                if (env.console) env.console.error("lorastack: setup failed", err);
            }
        }

        setup();
        // the WebUI defines cardClicked and builds the prompt boxes before or after this script; try again then
        if (typeof env.onUiLoaded === "function") env.onUiLoaded(setup);
        if (typeof env.onAfterUiUpdate === "function") env.onAfterUiUpdate(setup);
        return true;
    }

    var api = {
        parseTags: parseTags,
        findLoraTags: findLoraTags,
        loraTagAt: loraTagAt,
        removeSpanTidy: removeSpanTidy,
        removeLoraTags: removeLoraTags,
        formatStrength: formatStrength,
        stepLoraStrength: stepLoraStrength,
        parseCardText: parseCardText,
        removeCardFromPrompt: removeCardFromPrompt,
        installLorastackTags: installLorastackTags,
    };

    if (typeof module !== "undefined" && module.exports) {
        module.exports = api;
    } else if (typeof window !== "undefined") {
        window.lorastackTags = api;
        installLorastackTags(window);
    }
})();
