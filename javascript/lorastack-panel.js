/*
 * lorastack: the LoRA Stack panel's page glue.
 *
 * gradio 3.41 drops an event's trigger while the same event is still running, so the last keystrokes of a typed
 * <lora:…> tag can be lost until the prompt box is left. When typing pauses, this clicks the panel's hidden sync
 * button (#lorastack_TAB_sync), which reads the prompt again: a typed tag becomes a row without leaving the box.
 * Once the page has loaded it clicks it too, so that the parts of the panel that follow the loaded model (its
 * LoRAs, its blocks) are filled without the UI having waited for the model.
 */
(function () {
    "use strict";

    var TABS = ["txt2img", "img2img"];
    var PAUSE_MS = 350;

    function root() {
        if (typeof gradioApp === "function") {
            try {
                return gradioApp();
            } catch (err) {
                return document;
            }
        }
        return document;
    }

    function syncButton(tab) {
        var r = root();
        return r && typeof r.querySelector === "function" ? r.querySelector("#lorastack_" + tab + "_sync") : null;
    }

    var timers = {};

    function later(tab) {
        clearTimeout(timers[tab]);
        timers[tab] = setTimeout(function () {
            var button = syncButton(tab);
            if (button) button.click();
        }, PAUSE_MS);
    }

    function onInput(event) {
        var path = typeof event.composedPath === "function" ? event.composedPath() : [event.target];
        var target = path[0];
        if (!target || target.tagName !== "TEXTAREA" || typeof target.closest !== "function") return;
        TABS.forEach(function (tab) {
            if (target.closest("#" + tab + "_prompt")) later(tab);
        });
    }

    function install() {
        if (window.__lorastackPanel) return;
        window.__lorastackPanel = true;
        document.addEventListener("input", onInput, true);
        var done = {};
        var tries = 0;
        var poll = setInterval(function () {
            tries += 1;
            TABS.forEach(function (tab) {
                var button = syncButton(tab);
                if (button && !done[tab]) {
                    done[tab] = true;
                    button.click();
                }
            });
            if (tries > 300 || TABS.every(function (tab) { return done[tab]; })) clearInterval(poll);
        }, 200);
    }

    if (typeof window !== "undefined" && typeof document !== "undefined") install();
})();
