/* Shared helpers of the xraytriage pages: DOM building, API calls, formatting, polling.
   No framework and nothing from outside this server. */
"use strict";

const XT = (() => {
  /** Build an element: el("a", {href: "/", class: "x", dataset: {id: 1}}, "text", child). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function toLogin() {
    const next = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(next));
  }

  /** Parse a JSON error body into its message (the API's {"error": ...}). */
  function errorMessage(status, body, fallback) {
    if (body && typeof body === "object" && body.error) return String(body.error);
    if (status === 401) return "not signed in (missing or wrong token)";
    return fallback || "HTTP " + status;
  }

  /** The signed-in session's CSRF token (the page's meta tag; "" without a session). */
  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  /** fetch() a JSON endpoint with the session cookie; throws ApiError with the server's message. */
  async function api(path, options = {}) {
    const init = Object.assign({credentials: "same-origin", headers: {}}, options);
    init.headers = Object.assign({Accept: "application/json"}, options.headers || {});
    if (init.method && !["GET", "HEAD"].includes(init.method.toUpperCase())) {
      init.headers["X-CSRF-Token"] = csrfToken();  // see serving/csrf.py
    }
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      init.headers["Content-Type"] = "application/json";
      delete init.json;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError("the server cannot be reached (" + err.message + ")", 0, null);
    }
    let body = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) body = await response.json().catch(() => null);
    if (response.status === 401) {
      toLogin();
    }
    if (!response.ok) throw new ApiError(errorMessage(response.status, body), response.status, body);
    return body;
  }

  function pageData() {
    const node = document.getElementById("page-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function prob(value) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(2);
  }

  function time(iso) {
    if (!iso) return el("span", {class: "muted"}, "–");
    const date = new Date(iso);
    return el("time", {datetime: iso, title: iso}, date.toLocaleString());
  }

  function statusBadge(status) {
    return el("span", {class: "badge", dataset: {status}}, status);
  }

  /** The processing state of a study, with its error message when it failed. */
  function stateCell(item) {
    const parts = [el("span", {class: "state", dataset: {state: item.state}}, item.state)];
    if (item.error) parts.push(el("span", {class: "error small"}, item.error));
    return parts;
  }

  function queueText(queue) {
    if (!queue) return "";
    const images = queue.images || 0;
    const heatmaps = queue.heatmaps || 0;
    if (!images && !heatmaps) return "Queue empty";
    const parts = [];
    if (images) parts.push(images + " image" + (images === 1 ? "" : "s") + " to triage");
    if (heatmaps) parts.push(heatmaps + " heatmap" + (heatmaps === 1 ? "" : "s") + " to draw");
    return "Queue: " + parts.join(", ");
  }

  /** Call fn every `ms` (after it finishes) while `keepGoing()` says so; slower in a hidden tab. */
  function poll(fn, ms, keepGoing = () => true) {
    let stopped = false;
    async function tick() {
      if (stopped) return;
      if (!keepGoing()) {
        stopped = true;
        return;
      }
      try {
        await fn();
      } catch (err) {
        console.warn("poll failed:", err);
      }
      if (!stopped) setTimeout(tick, document.hidden ? ms * 5 : ms);
    }
    setTimeout(tick, ms);
    return {stop() { stopped = true; }};
  }

  /** Patient identifiers (ID, accession, age/sex, study date) shown or hidden on this screen.
      The choice is kept in this browser; a server started with --hide-identifiers never sends
      them, and the switch then says so. */
  const HIDE_KEY = "xraytriage.hideIdentifiers";
  function identifiersToggle(serverHides) {
    const box = document.getElementById("hide-identifiers");
    const apply = (hide) => document.body.classList.toggle("hide-identifiers", hide);
    let hide = serverHides;
    try {
      hide = serverHides || localStorage.getItem(HIDE_KEY) === "1";
    } catch (err) {
      hide = serverHides;
    }
    apply(hide);
    if (!box) return;
    box.checked = hide;
    if (serverHides) {
      box.disabled = true;
      box.parentElement.title = "identifiers are hidden by the server (serve --hide-identifiers)";
      return;
    }
    box.addEventListener("change", () => {
      apply(box.checked);
      try {
        localStorage.setItem(HIDE_KEY, box.checked ? "1" : "0");
      } catch (err) {
        /* private mode: the switch still works on this page */
      }
    });
  }

  /** An identifier (hidden on shared screens); "–" when the study has none. */
  function identifier(value, name) {
    return value ? el("span", {class: "identifier", dataset: {field: name}}, value) : el("span", {class: "muted"}, "–");
  }

  /** "45 y F" from the study's age and sex. */
  function ageSex(item) {
    return [item.patient_age, item.patient_sex].filter(Boolean).join(" ");
  }

  /** Caveats (low resolution...) as visible warning badges. */
  function warningBadges(warnings) {
    return (warnings || []).map((w) => el("span", {class: "warning-badge", role: "note", title: w}, "⚠ " + w));
  }

  return {
    el, api, ApiError, errorMessage, toLogin, pageData, prob, time, statusBadge, stateCell, queueText, poll,
    identifiersToggle, identifier, ageSex, warningBadges, csrfToken,
  };
})();
