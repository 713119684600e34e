/* Upload page: one request per file (its own progress bar and result), then its processing state. */
"use strict";

(() => {
  const {el, api, errorMessage, prob, queueText, poll} = XT;
  const PARALLEL_UPLOADS = 3;
  const POLL_MS = 1500;
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  const list = document.getElementById("upload-list");
  const summary = document.getElementById("upload-summary");
  const studyKey = document.getElementById("study-key");
  const waiting = [];       // [file, item] not yet sent
  const tracked = new Map(); // study id -> [item, ...] waiting for a result
  let active = 0;
  let poller = null;
  const counts = {files: 0, accepted: 0, rejected: 0};

  function sizeText(bytes) {
    if (bytes >= 1024 * 1024) return (bytes / 1024 / 1024).toFixed(1) + " MB";
    return Math.max(1, Math.round(bytes / 1024)) + " kB";
  }

  function updateSummary(queue) {
    const parts = [counts.files + " file" + (counts.files === 1 ? "" : "s"),
      counts.accepted + " accepted", counts.rejected + " rejected"];
    summary.textContent = parts.join(" · ") + (queue ? " · " + queueText(queue) : "");
  }

  function addFiles(files) {
    for (const file of files) {
      const progress = el("progress", {class: "progress", max: 100, value: 0, "aria-label": "upload of " + file.name});
      const item = el("li", {class: "upload-item", dataset: {filename: file.name, result: "waiting"}},
        el("span", {class: "file-name"}, file.name),
        el("span", {class: "muted small"}, " " + sizeText(file.size)),
        progress,
        el("span", {class: "message", role: "status"}, "waiting"));
      list.append(item);
      waiting.push([file, item]);
      counts.files += 1;
    }
    updateSummary();
    pump();
  }

  function pump() {
    while (active < PARALLEL_UPLOADS && waiting.length) {
      const [file, item] = waiting.shift();
      active += 1;
      upload(file, item).finally(() => {
        active -= 1;
        pump();
      });
    }
  }

  function setMessage(item, ...content) {
    item.querySelector(".message").replaceChildren(...content);
  }

  function upload(file, item) {
    return new Promise((resolve) => {
      const form = new FormData();
      form.append("files", file, file.name);
      if (studyKey.value.trim()) form.append("study", studyKey.value.trim());
      const xhr = new XMLHttpRequest();
      const progress = item.querySelector("progress");
      item.dataset.result = "uploading";
      setMessage(item, "uploading…");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) progress.value = Math.round((100 * event.loaded) / event.total);
      });
      xhr.addEventListener("load", () => {
        progress.value = 100;
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (err) {
          body = null;
        }
        if (xhr.status >= 200 && xhr.status < 300 && body && body.accepted && body.accepted.length) {
          accepted(item, body.accepted[0]);
        } else {
          const reason = body && body.rejected && body.rejected.length ? body.rejected[0].error
            : errorMessage(xhr.status, body, "upload failed (HTTP " + xhr.status + ")");
          rejected(item, reason, xhr.status);
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        rejected(item, "the upload failed: the server cannot be reached", 0);
        resolve();
      });
      xhr.open("POST", "/api/v1/images");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", XT.csrfToken());
      xhr.send(form);
    });
  }

  function accepted(item, result) {
    counts.accepted += 1;
    item.dataset.result = "accepted";
    item.dataset.studyId = result.study_id;
    item.dataset.state = "queued";
    const link = el("a", {href: "/studies/" + encodeURIComponent(result.study_id), class: "study-link"},
      "study " + result.study_id);
    setMessage(item, el("span", {class: "ok"}, result.duplicate ? "already received: " : "accepted: "), link,
      " · ", el("span", {class: "state", dataset: {state: "queued"}}, "queued"),
      ...(result.warnings || []).map((w) => el("span", {class: "warning-text", role: "note"}, " · ⚠ " + w)));
    if (!tracked.has(result.study_id)) tracked.set(result.study_id, []);
    tracked.get(result.study_id).push(item);
    updateSummary();
    if (!poller) poller = poll(refreshStates, POLL_MS, stillWaiting);
  }

  function rejected(item, reason, status) {
    counts.rejected += 1;
    item.dataset.result = "rejected";
    item.querySelector("progress").classList.add("failed");
    const parts = [el("span", {class: "error", role: "alert"}, "rejected: " + reason)];
    if (status === 401) parts.push(" ", el("a", {href: "/login?next=/upload"}, "sign in"));
    setMessage(item, ...parts);
    updateSummary();
  }

  async function refreshStates() {
    if (!tracked.size) return;
    const data = await api("/api/v1/worklist?limit=10000");
    const byId = new Map(data.items.map((s) => [s.id, s]));
    for (const [id, items] of tracked) {
      const study = byId.get(id);
      if (!study) continue;
      for (const item of items) {
        item.dataset.state = study.state;
        const state = item.querySelector(".state");
        state.dataset.state = study.state;
        if (study.state === "done") {
          const top = (study.findings || [])[0];
          state.textContent = "done · priority " + prob(study.priority) +
            (top ? " · " + top.name + " " + prob(top.probability) : "");
        } else if (study.state === "error") {
          state.textContent = "error: " + (study.error || "could not be read");
          state.classList.add("error");
        } else {
          state.textContent = study.state;
        }
      }
      if (study.state === "done" || study.state === "error") tracked.delete(id);
    }
    updateSummary(data.queue);
  }

  /** Keep polling while a result is awaited; when nothing is, let the next upload start a poller. */
  function stillWaiting() {
    const waitingForSomething = tracked.size > 0 || active > 0 || waiting.length > 0;
    if (!waitingForSomething) poller = null;
    return waitingForSomething;
  }

  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(Array.from(event.dataTransfer.files));
  });
  // a file dropped beside the zone must not make the browser navigate away from the uploads
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
})();
