/* Worklist page: renders the studies (API order = priority), filters, CSV link, polling. */
"use strict";

(() => {
  const {el, api, pageData, prob, time, statusBadge, stateCell, queueText, poll, identifier, ageSex, warningBadges} = XT;
  const POLL_MS = 2000;
  const TOP_FINDINGS = 3;
  const body = document.getElementById("worklist-body");
  const statusSelect = document.getElementById("status-filter");
  const findingSelect = document.getElementById("finding-filter");
  const exportLink = document.getElementById("export-csv");
  const moreButton = document.getElementById("show-more");
  const PAGE = Number(document.getElementById("worklist-table").dataset.pageSize) || 500;
  let limit = PAGE;  // rows asked for; "Show more" adds a page, polling keeps the same count
  const seen = new Set();
  let firstRender = true;
  let generation = 0;

  function filters() {
    const params = new URLSearchParams();
    if (statusSelect.value) params.set("status", statusSelect.value);
    if (findingSelect.value) params.set("finding", findingSelect.value);
    return params;
  }

  function flagBadge(item) {
    if (item.tier === "critical") {
      return el("span", {class: "critical-badge", title: item.flag_reason || "a critical finding"}, "Critical");
    }
    const flagged = item.flagged;
    if (flagged === null || flagged === undefined) return "–";
    return flagged
      ? el("span", {class: "flag-badge", title: item.flag_reason || "P(abnormal) at or above the model's study threshold"}, "Flagged")
      : el("span", {class: "muted"}, "–");
  }

  function findingsCell(item) {
    const findings = item.findings || [];
    if (!findings.length) {
      if (item.flag_reason) return el("span", {class: "flag-reason small"}, item.flag_reason);
      return item.state === "done" ? el("span", {class: "muted"}, "none above threshold") : el("span", {class: "muted"}, "–");
    }
    const shown = findings.slice(0, TOP_FINDINGS).map((f) =>
      el("li", {class: "finding", dataset: {finding: f.name, probability: f.probability}},
        f.name + " ", el("span", {class: "prob"}, prob(f.probability))));
    const more = findings.length - TOP_FINDINGS;
    return el("ul", {class: "top-findings"}, shown,
      more > 0 ? el("li", {class: "more", title: item.findings_text}, "+" + more + " more") : null);
  }

  function row(item) {
    const isNew = !firstRender && !seen.has(item.id);
    seen.add(item.id);
    const link = el("a", {href: item.url, class: "study-link"}, item.name || item.id);
    return el("tr", {
      class: isNew ? "arrived" : null,
      dataset: {
        studyId: item.id,
        rank: item.rank ?? "",
        priority: item.priority ?? "",
        state: item.state,
        readStatus: item.read_status,
      },
    },
      el("td", {class: "rank"}, item.rank ?? "–"),
      el("td", {class: "flag"}, flagBadge(item)),
      el("th", {scope: "row", class: "name"}, link,
        item.images > 1 ? el("span", {class: "muted small"}, " (" + item.images + " images)") : null,
        warningBadges(item.warnings),
        // folded copies of the columns a narrower window hides (app.css decides which show)
        el("div", {class: "fold fold-patient small muted"},
          [item.patient_id ? identifier(item.patient_id, "patient_id-folded") : null,
            [item.body_part, item.view].filter(Boolean).join(" ")]
            .filter(Boolean).flatMap((part, i) => (i ? [" · ", part] : [part])))),
      el("td", {class: "patient"},
        el("div", {}, identifier(item.patient_id, "patient_id")),
        item.accession ? el("div", {class: "small"}, "Acc ", identifier(item.accession, "accession")) : null,
        ageSex(item) ? el("div", {class: "small"}, identifier(ageSex(item), "age_sex")) : null),
      el("td", {class: "exam small"},
        el("div", {}, [item.body_part, item.view].filter(Boolean).join(" ") || "–"),
        item.model || item.routed_body_part
          ? el("div", {class: "routed muted", title: "body-part routing: the part the router saw and the model that scored it"},
            [item.routed_body_part, item.model ? item.model + " model" : null].filter(Boolean).join(" · "))
          : null,
        item.study_date ? el("div", {}, identifier(item.study_date, "study_date")) : null),
      el("td", {class: "priority num"}, prob(item.priority)),
      el("td", {class: "abnormal num"}, prob(item.abnormal)),
      el("td", {class: "findings"}, findingsCell(item)),
      el("td", {class: "read-status"}, statusBadge(item.read_status),
        item.new_images_since_read ? el("span", {class: "new-images small", title: "images arrived after it was read"},
          " new images since read") : null,
        el("div", {class: "fold fold-received small muted"}, stateCell(item), " · received ", time(item.received_at))),
      el("td", {class: "processing"}, stateCell(item)),
      el("td", {class: "received"}, time(item.received_at)));
  }

  function render(data) {
    body.replaceChildren(...data.items.map(row));
    firstRender = false;
    document.getElementById("worklist-empty").hidden = data.items.length > 0;
    const count = document.getElementById("worklist-count");
    count.textContent = data.items.length < data.total
      ? "showing " + data.items.length + " of " + data.total + " studies"
      : data.total + " stud" + (data.total === 1 ? "y" : "ies");
    moreButton.hidden = data.items.length >= data.total;
    document.getElementById("queue-indicator").textContent = queueText(data.queue);
    document.getElementById("worklist-updated").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  async function refresh() {
    const mine = ++generation;
    const params = filters();
    params.set("limit", String(limit));
    const data = await api("/api/v1/worklist?" + params);
    if (mine === generation) render(data);  // a newer request (filter change) wins
  }

  function applyFilters() {
    const params = filters();
    const query = params.size ? "?" + params : "";
    history.replaceState(null, "", "/" + query);
    exportLink.href = "/api/v1/worklist.csv" + query;
    refresh().catch((err) => {
      document.getElementById("worklist-updated").textContent = "Could not update: " + err.message;
    });
  }

  moreButton.addEventListener("click", () => {
    limit += PAGE;
    refresh().catch((err) => {
      document.getElementById("worklist-updated").textContent = "Could not update: " + err.message;
    });
  });
  statusSelect.addEventListener("change", applyFilters);
  findingSelect.addEventListener("change", applyFilters);
  const params = filters();
  exportLink.href = "/api/v1/worklist.csv" + (params.size ? "?" + params : "");
  const initial = pageData();
  XT.identifiersToggle(Boolean(initial.identifiers_hidden));
  render(initial);
  poll(() => refresh().catch((err) => {
    document.getElementById("worklist-updated").textContent = "Could not update: " + err.message;
  }), POLL_MS);
})();
