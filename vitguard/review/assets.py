"""The console's stylesheet and script, served as files of the console (no inline script: see pages.py)."""

from __future__ import annotations

__all__ = ["CONSOLE_CSS", "CONSOLE_JS"]

CONSOLE_CSS = """
:root { font-family: system-ui, sans-serif; color: #1b1b1b; background: #f4f5f7; }
body { margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem 3rem; }
header { display: flex; align-items: baseline; gap: 1.5rem; flex-wrap: wrap; }
header h1 { margin: 0.2rem 0; font-size: 1.4rem; }
.logout { margin-left: auto; }
.help { color: #444; font-size: 0.9rem; }
kbd { border: 1px solid #999; border-bottom-width: 2px; border-radius: 3px; padding: 0 0.3em;
      font-size: 0.85em; background: #fff; }
.item { overflow-wrap: anywhere; min-width: 0; }
.item { background: #fff; border: 1px solid #d0d4da; border-radius: 8px; padding: 0.8rem 1rem;
        margin: 0.9rem 0; }
.item[data-armed] { border-color: #b3261e; box-shadow: 0 0 0 3px rgba(179, 38, 30, 0.35); }
.armed-hint { font-weight: 600; color: #b3261e; min-height: 1.2em; margin: 0.3rem 0; }
.item:focus, .item:focus-within { border-color: #0b57d0; box-shadow: 0 0 0 3px rgba(11, 87, 208, 0.35); }
:focus-visible { outline: 3px solid #0b57d0; outline-offset: 2px; }
.item h2 { font-size: 1.05rem; margin: 0 0 0.3rem; }
.position { color: #666; }
.meta { color: #444; margin: 0 0 0.6rem; font-size: 0.9rem; }
.tag { display: inline-block; border-radius: 999px; padding: 0 0.6em; font-size: 0.8rem; background: #e8eaed; }
.tag-wave { background: #fce8e6; color: #a50e0e; }
.tag-appeal { background: #fef7e0; color: #7a4b00; }
.tag-near_duplicate { background: #e8f0fe; color: #0b57d0; }
.tag-bank_match { background: #f3e8fd; color: #6a1b9a; }
.body { display: flex; gap: 1rem; align-items: flex-start; }
.thumb { width: 256px; height: 256px; object-fit: contain; background: #222; border-radius: 4px; flex: none; }
.thumb.none { display: flex; align-items: center; justify-content: center; color: #ddd; font-size: 0.9rem; }
.details { flex: 1; min-width: 0; }
.scores { border-collapse: collapse; font-size: 0.9rem; }
.scores caption { text-align: left; font-weight: 600; }
.scores th, .scores td { padding: 0.1rem 0.8rem 0.1rem 0; text-align: left; }
.label-unsafe { color: #a50e0e; } .label-safe { color: #137333; }
.muted { color: #666; font-size: 0.85rem; }
.context { padding-left: 1.1rem; font-size: 0.9rem; overflow-wrap: anywhere; }
.metadata { display: grid; grid-template-columns: max-content 1fr; gap: 0 0.8rem; margin: 0.2rem 0; }
.metadata dt { font-weight: 600; } .metadata dd { margin: 0; }
.decide { display: flex; gap: 0.6rem; align-items: center; flex-wrap: wrap; margin-top: 0.7rem; }
.decide input[name=note] { flex: 1; min-width: 10rem; }
button { font: inherit; padding: 0.35rem 0.9rem; border-radius: 6px; border: 1px solid #888; background: #fff;
         cursor: pointer; }
button.confirm { border-color: #a50e0e; color: #a50e0e; }
button.overturn { border-color: #137333; color: #137333; }
.flash { background: #e6f4ea; border: 1px solid #137333; padding: 0.5rem 0.8rem; border-radius: 6px; }
.error { background: #fce8e6; border: 1px solid #a50e0e; padding: 0.5rem 0.8rem; border-radius: 6px; }
.login { max-width: 22rem; margin: 4rem auto; background: #fff; padding: 1.5rem; border-radius: 8px;
         border: 1px solid #d0d4da; }
.login form { display: grid; gap: 0.5rem; }
.login input { font: inherit; padding: 0.35rem; }
.recent { font-size: 0.9rem; color: #444; }
"""

CONSOLE_JS = """
// Keyboard review: j/k move between items; c then c confirms, o then o overturns the focused item.
(function () {
  "use strict";
  function items() { return Array.prototype.slice.call(document.querySelectorAll("article.item")); }
  function current() {
    var el = document.activeElement;
    return el && el.closest ? el.closest("article.item") : null;
  }
  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "SELECT" || el.tagName === "TEXTAREA");
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(document.activeElement)) { return; }
    var list = items();
    if (!list.length) { return; }
    var item = current();
    var at = item ? list.indexOf(item) : -1;
    if (ev.key === "j" || ev.key === "k") {
      var next = ev.key === "j" ? Math.min(at + 1, list.length - 1) : Math.max(at - 1, 0);
      list[next].focus();
      list[next].scrollIntoView({block: "nearest"});
      ev.preventDefault();
    } else if ((ev.key === "c" || ev.key === "o") && item) {
      // a confirm step: the first press arms the decision on the focused item and says so, the same key again
      // on the same item decides it; anything else disarms. A double press decides the item once, the one
      // on screen, never the next one after the page reloads.
      ev.preventDefault();
      var value = ev.key === "c" ? "confirm_unsafe" : "overturn_safe";
      if (item.getAttribute("data-armed") !== value) { arm(item, value); return; }
      var button = item.querySelector('button[name="decision"][value="' + value + '"]');
      if (button && !submitted) { submitted = true; button.click(); }
      return;
    }
    disarm();
  });
  var submitted = false;
  function disarm() {
    items().forEach(function (el) {
      el.removeAttribute("data-armed");
      var hint = el.querySelector(".armed-hint");
      if (hint) { hint.textContent = ""; }
    });
  }
  function arm(item, value) {
    disarm();
    item.setAttribute("data-armed", value);
    var hint = item.querySelector(".armed-hint");
    if (hint) {
      hint.textContent = value === "confirm_unsafe" ? "Press c again to confirm unsafe (any other key cancels)."
                                                    : "Press o again to overturn as safe (any other key cancels).";
    }
  }
  document.addEventListener("focusin", function (ev) {
    var item = ev.target && ev.target.closest ? ev.target.closest("article.item") : null;
    if (item && !item.hasAttribute("data-armed")) { disarm(); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var list = items();
    if (list.length && !document.querySelector("[autofocus]")) { list[0].focus(); }
  });
})();
"""
