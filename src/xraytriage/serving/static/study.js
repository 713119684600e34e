/* Study page: images, findings table, heatmap overlays with boxes, reader status, polling. */
"use strict";

(() => {
  const {el, api, pageData, prob, time, poll, identifier, ageSex} = XT;
  const POLL_MS = 1500;
  const article = document.getElementById("study");
  let data = pageData();
  const shown = new Set();      // "imageId|finding" of the overlays switched on
  const drawing = new Set();    // findings being drawn on demand
  const figures = new Map();    // image id -> {figure, stage, toggles}
  const apiUrl = "/api/v1/studies/" + encodeURIComponent(data.id);

  const key = (imageId, finding) => imageId + "|" + finding;
  const waitingForModel = () => data.state === "queued" || data.state === "processing";
  const waitingForHeatmaps = () => data.heatmaps_state === "pending" || data.heatmaps_state === "processing";

  function say(text) {
    document.getElementById("status-message").textContent = text;
  }

  function heatmapsOf(imageId) {
    return (data.heatmaps || []).filter((h) => h.image_id === imageId);
  }

  function heatmapFor(imageId, finding) {
    return (data.heatmaps || []).find((h) => h.image_id === imageId && h.finding === finding) || null;
  }

  function layerUrl(imageId, finding) {
    return apiUrl + "/heatmaps/" + encodeURIComponent(finding) + ".png?image=" + encodeURIComponent(imageId) +
      "&style=layer";
  }

  // --- header ------------------------------------------------------------------------------
  function renderHeader() {
    article.dataset.state = data.state;
    article.dataset.readStatus = data.read_status;
    article.dataset.heatmapsState = data.heatmaps_state;
    document.getElementById("study-name").textContent = data.name || data.id;
    const badge = document.getElementById("read-status");
    badge.textContent = data.read_status;
    badge.dataset.status = data.read_status;
    for (const button of article.querySelectorAll("[data-set-status]")) {
      const current = button.dataset.setStatus === data.read_status;
      button.disabled = current;
      button.setAttribute("aria-pressed", current ? "true" : "false");
    }
    const flag = data.tier === "critical" ? el("span", {class: "critical-badge", id: "study-flag"}, "Critical")
      : data.flagged === null || data.flagged === undefined ? "–"
      : data.flagged ? el("span", {class: "flag-badge", id: "study-flag"}, "Flagged")
      : el("span", {id: "study-flag"}, "not flagged");
    const facts = [
      ["Flag", flag],
      ["Why flagged", data.flag_reason ? el("span", {id: "flag-reason"}, data.flag_reason) : "–"],
      ["OOD score", data.ood_score === null || data.ood_score === undefined ? "–" : data.ood_score.toFixed(2)],
      ["Rank", data.rank ?? "–"],
      ["Priority", prob(data.priority)],
      ["Abnormal", prob(data.abnormal)],
      ["Processing", el("span", {class: "state", id: "study-state", dataset: {state: data.state}}, data.state)],
      ["Heatmaps", el("span", {id: "heatmaps-state"}, data.heatmaps_state)],
      ["Received", time(data.received_at)],
      ["Triaged", time(data.predicted_at)],
      ["Source", data.source],
      ["Patient ID", identifier(data.patient_id, "patient_id")],
      ["Accession", identifier(data.accession, "accession")],
      ["Age / sex", identifier(ageSex(data), "age_sex")],
      ["Study date", identifier(data.study_date, "study_date")],
      ["Exam", [data.body_part, data.view].filter(Boolean).join(" ") || "–"],
    ];
    if (data.model || data.routed_body_part) {
      facts.push(["Routed", el("span", {id: "study-routed"},
        [data.routed_body_part, data.model ? data.model + " model" : null].filter(Boolean).join(" · "))]);
    }
    document.getElementById("study-facts").replaceChildren(
      ...facts.map(([name, value]) => el("div", {class: "fact"}, el("dt", {}, name), el("dd", {}, value))));
    const fresh = document.getElementById("study-new-images");
    fresh.hidden = !data.new_images_since_read;
    fresh.textContent = data.new_images_since_read
      ? "New images arrived after this study was read (first at " + new Date(data.new_images_at).toLocaleString() + ")."
      : "";
    const warnings = document.getElementById("study-warnings");
    warnings.hidden = !(data.warnings || []).length;
    warnings.textContent = (data.warnings || []).length ? "⚠ Caution: " + data.warnings.join("; ") + "." : "";
    const error = document.getElementById("study-error");
    error.hidden = !data.error;
    error.textContent = data.error ? "Error: " + data.error : "";
    const progress = document.getElementById("study-progress");
    const waiting = waitingForModel() ? "Waiting for the model… this page updates by itself."
      : waitingForHeatmaps() ? "Drawing heatmaps… they appear here when ready." : "";
    progress.hidden = !waiting;
    progress.textContent = waiting;
  }

  // --- images and overlays -------------------------------------------------------------------
  function figureFor(image) {
    if (figures.has(image.id)) return figures.get(image.id);
    const picture = el("img", {
      class: "radiograph",
      src: image.display_url,
      alt: "radiograph " + image.filename,
      dataset: {imageId: image.id},
      onload: () => layoutLabels(picture.parentNode),
    });
    const stage = el("div", {class: "stage", dataset: {imageId: image.id}}, picture);
    if (image.width && image.height) {
      // fill the column (small images are scaled up) but keep the whole image in view
      const aspect = image.width / image.height;
      stage.style.aspectRatio = image.width + " / " + image.height;
      stage.style.width = "min(100%, calc(78vh * " + aspect.toFixed(5) + "))";
      stage.classList.add("sized");
    }
    const caption = el("figcaption", {class: "small"});
    const toggles = el("div", {class: "image-toggles"});
    const figure = el("figure", {class: "viewer", dataset: {imageId: image.id}}, stage, caption, toggles);
    picture.addEventListener("error", () => {
      stage.removeAttribute("style");
      stage.classList.remove("sized");
      stage.replaceChildren(el("p", {class: "error"}, "The image " + image.filename + " cannot be shown."));
    });
    const entry = {figure, stage, caption, toggles};
    figures.set(image.id, entry);
    document.getElementById("image-list").append(figure);
    return entry;
  }

  function boxFor(image, heatmap) {
    const box = heatmap.box;
    if (!box || !image.width || !image.height) return null;
    const pct = (v, whole) => (100 * v / whole).toFixed(3) + "%";
    const node = el("div", {
      class: "heat-box",
      dataset: {finding: heatmap.finding, imageId: image.id},
      title: heatmap.finding + " box (original pixels x " + box.x + ", y " + box.y + ", " + box.w + " × " + box.h + ")",
    }, el("span", {class: "heat-box-label"}, heatmap.finding + " " + prob(heatmap.probability)));
    // CSSOM properties, not a style attribute: the Content-Security-Policy allows no inline styles
    Object.assign(node.style, {
      left: pct(box.x, image.width), top: pct(box.y, image.height),
      width: pct(box.w, image.width), height: pct(box.h, image.height),
    });
    if (heatmap.colour) {
      node.style.setProperty("--box", heatmap.colour);
      node.firstChild.style.color = inkOn(heatmap.colour);
    }
    return node;
  }

  // black or white text, whichever reads better on the finding's colour
  function inkOn(hex) {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  }

  // Box labels that would overlap an earlier one (or leave the image) move down, one after the
  // other, so every label stays readable however many heatmaps are on.
  function layoutLabels(stage) {
    const labels = [...stage.querySelectorAll(".heat-box-label")];
    for (const label of labels) label.style.transform = "";
    const outer = stage.getBoundingClientRect();
    const placed = [];
    const rects = labels.map((label) => ({label, rect: label.getBoundingClientRect()}))
      .sort((a, b) => a.rect.top - b.rect.top || a.rect.left - b.rect.left);
    for (const {label, rect} of rects) {
      let shift = Math.max(0, outer.top - rect.top);
      const hits = (r) => placed.find((p) => r.left < p.right && p.left < r.right && r.top + shift < p.bottom &&
        p.top < r.bottom + shift);
      for (let hit = hits(rect), guard = 0; hit && guard < 50; hit = hits(rect), guard++) {
        shift = hit.bottom - rect.top + 1;
      }
      if (shift) label.style.transform = "translateY(" + shift.toFixed(1) + "px)";
      placed.push({left: rect.left, right: rect.right, top: rect.top + shift, bottom: rect.bottom + shift});
    }
  }

  // --- legend: each overlay's colour and scale, as the overlay pictures draw it ----------------
  function scaleGradient(heatmap) {
    const s = heatmap.scale || {level: 0.3, opacity: [0.25, 0.7], shade: [0.55, 1]};
    const [r, g, b] = [1, 3, 5].map((i) => parseInt((heatmap.colour || "#00e5ff").slice(i, i + 2), 16));
    const stop = (t) => {
      const shade = s.shade[0] + (s.shade[1] - s.shade[0]) * t;
      const alpha = s.opacity[0] + (s.opacity[1] - s.opacity[0]) * t;
      return "rgba(" + [r, g, b].map((c) => Math.round(c * shade)).join(", ") + ", " + alpha.toFixed(3) + ")";
    };
    const level = (100 * s.level).toFixed(0) + "%";
    return "linear-gradient(to right, transparent 0, transparent " + level + ", " + stop(0) + " " + level +
      ", " + stop(0.5) + ", " + stop(1) + " 100%)";
  }

  function renderLegend() {
    const on = (data.heatmaps || []).filter((h) => shown.has(key(h.image_id, h.finding)));
    const legend = document.getElementById("heat-legend");
    legend.hidden = !on.length;
    const images = new Set(on.map((h) => h.image_id));
    const name = (h) => (data.image_list || []).find((i) => i.id === h.image_id)?.filename || "";
    document.getElementById("heat-legend-items").replaceChildren(...on.map((h) => {
      const swatch = el("span", {class: "heat-scale", "aria-hidden": "true"});
      swatch.style.backgroundImage = scaleGradient(h);
      const chip = el("span", {class: "heat-chip", "aria-hidden": "true"});
      chip.style.background = h.colour || "";
      return el("li", {class: "heat-legend-item", dataset: {finding: h.finding, imageId: h.image_id}},
        chip, el("span", {class: "heat-legend-name"}, h.finding),
        el("span", {class: "muted small"}, " " + prob(h.probability) + " (threshold " + prob(h.threshold) + ")" +
          (images.size > 1 ? " · " + name(h) : "")),
        swatch, el("span", {class: "muted small"}, "low → high"));
    }));
  }

  function applyOpacity() {
    const slider = document.getElementById("heat-opacity");
    const value = Number(slider.value) / 100;
    document.getElementById("image-list").style.setProperty("--heat-opacity", String(value));
    document.getElementById("heat-opacity-value").textContent = slider.value + "%";
  }

  function renderOverlays(image, entry) {
    const wanted = new Set(heatmapsOf(image.id).filter((h) => shown.has(key(image.id, h.finding))).map((h) => h.finding));
    for (const node of entry.stage.querySelectorAll(".heat-layer, .heat-box")) {
      if (!wanted.has(node.dataset.finding)) node.remove();
    }
    for (const finding of wanted) {
      const selector = (cls) => "." + cls + "[data-finding=\"" + CSS.escape(finding) + "\"]";
      const heatmap = heatmapFor(image.id, finding);
      if (!entry.stage.querySelector(selector("heat-layer"))) {
        const layer = el("img", {
          class: "heat-layer",
          src: heatmap.layer_url,
          alt: "heatmap of " + finding,
          dataset: {finding, imageId: image.id},
        });
        layer.addEventListener("error", () => say("The heatmap of " + finding + " could not be loaded."));
        entry.stage.append(layer);
      }
      if (!entry.stage.querySelector(selector("heat-box"))) {
        const box = boxFor(image, heatmap);
        if (box) entry.stage.append(box);
      }
    }
    layoutLabels(entry.stage);
  }

  function toggle(imageId, finding) {
    const id = "toggle-" + imageId.slice(0, 12) + "-" + finding.replace(/[^A-Za-z0-9]+/g, "-");
    const box = el("input", {
      type: "checkbox",
      id,
      class: "heatmap-toggle",
      dataset: {finding, imageId},
      onchange: (event) => {
        if (event.target.checked) shown.add(key(imageId, finding));
        else shown.delete(key(imageId, finding));
        render();
      },
    });
    box.checked = shown.has(key(imageId, finding));
    return el("label", {for: id, class: "toggle"}, box, " show");
  }

  function renderImages() {
    const images = data.image_list || [];
    document.getElementById("images-plural").textContent = images.length > 1 ? "s (" + images.length + ")" : "";
    for (const image of images) {
      const entry = figureFor(image);
      entry.figure.dataset.state = image.state;
      entry.caption.replaceChildren(...[
        el("span", {}, image.filename + " · " + (image.format || "").toUpperCase() +
          (image.width ? " · " + image.width + " × " + image.height + " px" : "") +
          (image.body_part || image.view ? " · " + [image.body_part, image.view].filter(Boolean).join(" ") : "") +
          (image.id === data.key_image_id && images.length > 1 ? " · key image" : "")),
        image.warning ? el("span", {class: "warning-text", role: "note"}, " · ⚠ " + image.warning) : null,
        image.error ? el("span", {class: "error"}, " · " + image.error) : null,
      ].filter(Boolean));  // replaceChildren(null) would write the text "null"
      // heatmaps of images other than the key image (the table's toggles are for the key image)
      const others = image.id === data.key_image_id ? [] : heatmapsOf(image.id);
      entry.toggles.replaceChildren(...others.map((h) =>
        el("span", {class: "other-toggle"}, h.finding + " ", toggle(image.id, h.finding))));
      renderOverlays(image, entry);
    }
  }

  // --- findings table ------------------------------------------------------------------------
  async function drawOnDemand(finding) {
    drawing.add(finding);
    render();
    say("Drawing the heatmap of " + finding + "…");
    try {
      const response = await fetch(layerUrl(data.key_image_id, finding), {credentials: "same-origin"});
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new Error(body && body.error ? body.error : "HTTP " + response.status);
      }
      data = await api(apiUrl);
      shown.add(key(data.key_image_id, finding));
      say("Heatmap of " + finding + " drawn.");
    } catch (err) {
      say("The heatmap of " + finding + " could not be drawn: " + err.message);
    } finally {
      drawing.delete(finding);
      render();
    }
  }

  function heatmapCell(row) {
    if (!row.is_finding || data.state !== "done" || !data.key_image_id) return el("span", {class: "muted"}, "–");
    if (heatmapFor(data.key_image_id, row.name)) return toggle(data.key_image_id, row.name);
    if (drawing.has(row.name)) return el("span", {class: "muted", role: "status"}, "drawing…");
    return el("button", {
      type: "button",
      class: "link heatmap-request",
      dataset: {finding: row.name},
      onclick: () => drawOnDemand(row.name),
    }, "draw");
  }

  function renderFindings() {
    const rows = (data.findings_table || []).map((row) => el("tr", {
      class: row.flagged ? "flagged" : null,
      dataset: {finding: row.name, probability: row.probability, flagged: row.flagged ? "true" : "false"},
    },
      el("th", {scope: "row"}, row.name),
      el("td", {class: "num"}, prob(row.probability)),
      el("td", {class: "num"}, prob(row.threshold)),
      el("td", {class: "flag"}, row.flagged ? el("span", {class: "flag-mark", title: "at or above threshold"}, "▲ yes") : ""),
      el("td", {}, heatmapCell(row))));
    if (!rows.length) {
      const text = waitingForModel() ? "Not triaged yet." : "No findings.";
      rows.push(el("tr", {}, el("td", {colspan: 5, class: "muted"}, text)));
    }
    document.getElementById("findings-body").replaceChildren(...rows);
  }

  function render() {
    renderHeader();
    renderImages();
    renderFindings();
    renderLegend();
  }

  document.getElementById("heat-opacity").addEventListener("input", applyOpacity);
  applyOpacity();
  window.addEventListener("resize", () => {
    for (const entry of figures.values()) layoutLabels(entry.stage);
  });

  // --- reader status -------------------------------------------------------------------------
  for (const button of article.querySelectorAll("[data-set-status]")) {
    button.addEventListener("click", async () => {
      const status = button.dataset.setStatus;
      try {
        data = await api(apiUrl, {method: "PATCH", json: {status}});
        render();
        say("Marked as " + status + ".");
      } catch (err) {
        say("Could not change the status: " + err.message);
      }
    });
  }

  XT.identifiersToggle(Boolean(data.identifiers_hidden));
  render();
  poll(async () => {
    data = await api(apiUrl);
    render();
  }, POLL_MS, () => waitingForModel() || waitingForHeatmaps());
})();
