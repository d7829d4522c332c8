/* mpoxscan page script: photo picking (files, camera, drag-and-drop, paste), previews, upload
 * with progress, and result rendering. No inline script anywhere, so a strict CSP holds.
 * Results are built with textContent only, never innerHTML. */
"use strict";

document.documentElement.classList.add("js");

(function () {
  const state = { files: [], catalogue: {}, busy: false };

  function t(key, params) {
    let text = Object.prototype.hasOwnProperty.call(state.catalogue, key) ? state.catalogue[key] : null;
    if (text === null) return null;
    if (params) {
      Object.keys(params).forEach(function (name) {
        text = text.split("{" + name + "}").join(String(params[name]));
      });
    }
    return text;
  }

  function tr(key, params, fallback) {
    const text = t(key, params);
    return text === null ? (fallback !== undefined ? fallback : key) : text;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      const value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    });
    (children || []).forEach(function (child) {
      if (child) node.appendChild(child);
    });
    return node;
  }

  function percent(p) {
    if (p === null || p === undefined || Number.isNaN(p)) return "–";
    const value = p * 100;
    if (value < 1) return "<1%";
    if (value > 99) return ">99%";
    return Math.round(value) + "%";
  }

  function init() {
    const form = document.getElementById("upload-form");
    if (!form) return;
    const ui = {
      form: form,
      lang: form.dataset.lang || document.documentElement.lang || "en",
      maxFiles: parseInt(form.dataset.maxFiles, 10) || 10,
      maxBytes: parseInt(form.dataset.maxBytes, 10) || 10 * 1024 * 1024,
      maxMb: form.dataset.maxMb || "10",
      api: form.dataset.api || "/api/v1/predict",
      dropzone: document.getElementById("dropzone"),
      inputs: [document.getElementById("file-input"), document.getElementById("camera-input")],
      selection: document.getElementById("selection"),
      count: document.getElementById("selection-count"),
      previews: document.getElementById("previews"),
      message: document.getElementById("form-message"),
      explain: document.getElementById("explain"),
      submit: document.getElementById("submit"),
      clear: document.getElementById("clear"),
      progress: document.getElementById("progress"),
      statusText: document.getElementById("status-text"),
      results: document.getElementById("results"),
      resultsBody: document.getElementById("results-body"),
      resultsTitle: document.getElementById("results-title"),
    };
    const ready = fetch("/i18n/" + encodeURIComponent(ui.lang) + ".json", { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : {}; })
      .then(function (catalogue) { state.catalogue = catalogue; })
      .catch(function () { /* the page still works with the keys' fallbacks */ });

    ui.inputs.forEach(function (input) {
      if (!input) return;
      input.addEventListener("change", function () {
        addFiles(ui, Array.from(input.files || []));
        input.value = "";
      });
    });
    wireDropzone(ui);
    document.addEventListener("paste", function (event) {
      const items = Array.from((event.clipboardData && event.clipboardData.files) || []);
      if (items.length) {
        event.preventDefault();
        addFiles(ui, items);
      }
    });
    ui.clear.addEventListener("click", function () {
      state.files.forEach(function (entry) { URL.revokeObjectURL(entry.url); });
      state.files = [];
      showMessage(ui, "");
      renderPreviews(ui);
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      ready.then(function () { submit(ui); });
    });
  }

  function wireDropzone(ui) {
    ["dragenter", "dragover"].forEach(function (type) {
      ui.dropzone.addEventListener(type, function (event) {
        event.preventDefault();
        ui.dropzone.classList.add("is-dragover");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      ui.dropzone.addEventListener(type, function () { ui.dropzone.classList.remove("is-dragover"); });
    });
    ui.dropzone.addEventListener("drop", function (event) {
      event.preventDefault();
      addFiles(ui, Array.from((event.dataTransfer && event.dataTransfer.files) || []));
    });
    // A photo dropped beside the zone must not make the browser navigate away from the page.
    ["dragover", "drop"].forEach(function (type) {
      document.addEventListener(type, function (event) { event.preventDefault(); });
    });
  }

  function addFiles(ui, files) {
    const problems = [];
    files.forEach(function (file) {
      if (file.type && !file.type.startsWith("image/")) {
        problems.push(tr("upload.not_image"));
        return;
      }
      if (file.size > ui.maxBytes) {
        problems.push(tr("upload.too_big", { max_mb: ui.maxMb }));
        return;
      }
      if (state.files.length >= ui.maxFiles) {
        problems.push(tr("upload.too_many", { max: ui.maxFiles }));
        return;
      }
      state.files.push({ file: file, url: URL.createObjectURL(file) });
    });
    showMessage(ui, Array.from(new Set(problems)).join(" "));
    renderPreviews(ui);
  }

  function renderPreviews(ui) {
    ui.previews.replaceChildren();
    state.files.forEach(function (entry, i) {
      const remove = el("button", { type: "button", "aria-label": tr("upload.remove", { n: i + 1 }), text: "×" });
      remove.addEventListener("click", function () {
        URL.revokeObjectURL(entry.url);
        state.files.splice(state.files.indexOf(entry), 1);
        renderPreviews(ui);
        ui.submit.focus();
      });
      const preview = el("img", { src: entry.url, alt: tr("upload.preview_alt", { n: i + 1 }) });
      // Browsers other than Safari cannot draw HEIC; the server decodes it anyway, so say so.
      preview.addEventListener("error", function () {
        preview.replaceWith(el("span", {
          className: "no-preview",
          role: "img",
          "aria-label": tr("upload.no_preview", { n: i + 1, name: entry.file.name }),
          text: tr("upload.no_preview_short", { name: entry.file.name }),
        }));
      });
      ui.previews.appendChild(el("li", {}, [preview, remove]));
    });
    const n = state.files.length;
    ui.selection.hidden = n === 0;
    ui.clear.hidden = n === 0;
    ui.count.textContent = tr("upload.count", { n: n, max: ui.maxFiles });
  }

  function showMessage(ui, text) {
    ui.message.textContent = text || "";
  }

  function setStatus(ui, text, progress) {
    ui.statusText.textContent = text || "";
    if (progress === undefined) {
      ui.progress.hidden = true;
    } else {
      ui.progress.hidden = false;
      if (progress === null) ui.progress.removeAttribute("value");
      else ui.progress.value = progress;
    }
  }

  function submit(ui) {
    if (state.busy) return;
    const answers = collectAnswers(ui.form);
    if (!state.files.length && !answers) {
      showMessage(ui, tr("q.need_input"));
      return;
    }
    showMessage(ui, "");
    const sent = state.files.slice();
    const body = new FormData();
    // The server never reads file names; a neutral name keeps them off the wire altogether.
    sent.forEach(function (entry, i) { body.append("file", entry.file, "photo-" + (i + 1)); });
    // Answers travel as one JSON text part; they are never kept in the page's state either.
    if (answers) body.append("answers", JSON.stringify(answers));
    const explain = ui.explain.checked;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", ui.api + "?explain=" + (explain ? "true" : "false"));
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    state.busy = true;
    ui.submit.disabled = true;
    ui.form.setAttribute("aria-busy", "true");
    setStatus(ui, tr("status.uploading", { pct: 0 }), 0);
    xhr.upload.addEventListener("progress", function (event) {
      if (!event.lengthComputable) return;
      const pct = Math.round((event.loaded / event.total) * 100);
      setStatus(ui, tr("status.uploading", { pct: pct }), pct);
    });
    xhr.upload.addEventListener("load", function () {
      setStatus(ui, tr("status.analysing"), null);
    });
    xhr.addEventListener("load", function () {
      finish(ui);
      const data = xhr.response;
      if (xhr.status === 200 && data && data.results) {
        renderResults(ui, data, sent);
        setStatus(ui, tr("status.done"));
      } else {
        setStatus(ui, tr("status.failed"));
        showMessage(ui, errorText(ui, data && data.error));
      }
    });
    xhr.addEventListener("error", function () {
      finish(ui);
      setStatus(ui, tr("status.failed"));
      showMessage(ui, tr("status.network"));
    });
    xhr.send(body);
  }

  function finish(ui) {
    state.busy = false;
    ui.submit.disabled = false;
    ui.form.removeAttribute("aria-busy");
  }

  function errorText(ui, error) {
    if (!error) return tr("error.internal_error");
    return tr("error." + error.code, { max_files: ui.maxFiles, max_mb: ui.maxMb }, error.message);
  }

  function renderResults(ui, data, sent) {
    const combined = data.combined;
    const advice = data.questionnaire
      ? adviceBlock(data.questionnaire, combined.status === "no_photo")
      : null;
    if (combined.status === "no_photo") {
      ui.resultsBody.replaceChildren(advice);
      ui.results.hidden = false;
      ui.resultsTitle.focus();
      return;
    }
    const overall = el("section", { className: "card overall", "aria-labelledby": "overall-title" }, [
      el("h3", { id: "overall-title", text: tr("result.overall") }),
    ]);
    if (combined.status === "ok" && combined.band) {
      overall.appendChild(bandBlock(combined.band, combined.probability));
      if (combined.photos > 1) {
        overall.appendChild(el("p", {
          className: "muted combined-note",
          text: tr("result.combined_note", { assessed: combined.assessed, photos: combined.photos }),
        }));
      }
      overall.appendChild(nextSteps(combined.band));
    } else if (combined.status === "no_lesion") {
      overall.appendChild(noLesionBlock());
    } else {
      overall.appendChild(el("p", { className: "retake-all", text: tr("result.retake_all") }));
      overall.appendChild(el("ul", {}, ["tips.1", "tips.2", "tips.3"].map(function (key) {
        return el("li", { text: tr(key) });
      })));
    }
    const grid = el("div", { className: "photo-grid" }, data.results.map(function (item) {
      return photoCard(ui, item, sent[item.index]);
    }));
    if (advice) ui.resultsBody.replaceChildren(advice);
    else ui.resultsBody.replaceChildren();
    ui.resultsBody.append(
      overall,
      el("h3", { text: tr("result.per_photo") }),
      grid,
      el("p", { className: "muted", text: tr("result.model", { version: data.model.version }) })
    );
    ui.results.hidden = false;
    ui.resultsTitle.focus();
  }

  function bandBlock(band, probability) {
    return el("div", { className: "score band-" + band }, [
      el("p", { className: "score-probability" }, [
        el("span", { className: "score-label", text: tr("result.probability") }),
        el("span", { className: "score-value", text: percent(probability) }),
      ]),
      el("p", { className: "score-band" }, [
        el("span", { className: "score-label", text: tr("result.band") }),
        el("span", { className: "band-badge", text: tr("band." + band) }),
      ]),
      el("p", { className: "score-summary", text: tr("band." + band + ".summary") }),
    ]);
  }

  function noLesionBlock() {
    return el("div", { className: "score no-lesion" }, [
      el("p", { className: "score-band" }, [
        el("span", { className: "score-label", text: tr("result.band") }),
        el("span", { className: "band-badge", text: tr("outcome.no_lesion") }),
      ]),
      el("p", { className: "score-summary", text: tr("outcome.no_lesion.summary") }),
      el("ul", {}, ["outcome.no_lesion.retake", "next.always"].map(function (key) {
        return el("li", { text: tr(key) });
      })),
    ]);
  }

  function nextSteps(band) {
    let keys = ["next.low.1", "next.low.2"];
    if (band === "high") keys = ["next.high.1", "next.isolate"];
    else if (band === "uncertain") keys = ["next.uncertain.1", "next.isolate"];
    keys.push("next.always");
    return el("section", { className: "next-steps" }, [
      el("h4", { text: tr("next.title") }),
      el("ul", {}, keys.map(function (key) { return el("li", { text: tr(key) }); })),
    ]);
  }

  function photoCard(ui, item, entry) {
    const n = item.index + 1;
    const card = el("article", { className: "photo-card status-" + item.status }, [
      el("h4", { text: tr("photo.title", { n: n }) }),
    ]);
    const hasHeat = item.status === "ok" && item.heatmap_png;
    if (hasHeat) {
      const id = "heat-" + item.index;
      card.appendChild(el("input", { type: "checkbox", className: "heat-toggle", id: id, checked: true }));
      card.appendChild(el("label", { className: "toggle-label", for: id, text: tr("photo.toggle") }));
    }
    if (entry) {
      const frame = el("div", { className: "photo-frame" }, [
        el("img", { className: "photo", src: entry.url, alt: tr("photo.alt", { n: n }) }),
      ]);
      if (hasHeat) {
        frame.appendChild(el("img", {
          className: "heatmap",
          src: "data:image/png;base64," + item.heatmap_png,
          alt: tr("photo.heat_alt", { n: n }),
        }));
      }
      const figure = el("figure", { className: "photo-figure" }, [frame]);
      if (hasHeat) figure.appendChild(el("figcaption", { text: tr("photo.heat_note") }));
      card.appendChild(figure);
    }
    if (item.status === "ok") {
      const band = item.prediction.band || "none";
      card.appendChild(el("p", { className: "photo-score band-" + band }, [
        el("span", { className: "score-value", text: percent(item.prediction.probability) }),
        item.prediction.band
          ? el("span", { className: "band-badge", text: tr("band." + item.prediction.band) })
          : null,
      ]));
    } else if (item.status === "no_lesion") {
      card.appendChild(el("p", { className: "photo-no-lesion" }, [
        el("span", { className: "band-badge", text: tr("outcome.no_lesion") }),
        document.createTextNode(" " + tr("photo.no_lesion")),
      ]));
    } else if (item.status === "retake") {
      card.appendChild(el("p", { className: "photo-problem", text: tr("photo.retake") }));
      card.appendChild(el("ul", { className: "issues" }, item.issues.map(function (issue) {
        return el("li", { text: tr("issue." + issue.code, null, issue.message) });
      })));
    } else {
      card.appendChild(el("p", { className: "photo-problem", text: tr("photo.error") }));
      card.appendChild(el("p", { className: "issues", text: errorText(ui, item.error) }));
    }
    return card;
  }

  // The questionnaire: answers from the form's question groups, and the advice they get.
  function collectAnswers(form) {
    const answers = {};
    form.querySelectorAll(".q[data-question]").forEach(function (group) {
      const id = group.dataset.question;
      if (group.dataset.kind === "multi") {
        const ticked = Array.from(group.querySelectorAll("input:checked")).map(function (input) {
          return input.dataset.value;
        });
        if (ticked.length) answers[id] = ticked;
      } else {
        const chosen = group.querySelector("input:checked");
        if (chosen) answers[id] = chosen.value;
      }
    });
    return Object.keys(answers).length ? answers : null;
  }

  function adviceBlock(advice, noPhoto) {
    const rules = advice.rules.map(function (rule) {
      const cited = [document.createTextNode(tr("advice.sources") + " ")];
      rule.sources.forEach(function (id, i) {
        if (i) cited.push(document.createTextNode(", "));
        cited.push(el("a", { href: "/guidance#source-" + id, text: tr("source." + id) }));
      });
      return el("li", { "data-rule": rule.id }, [
        document.createTextNode(tr("rule." + rule.id) + " "),
        el("span", { className: "advice-sources" }, cited),
      ]);
    });
    return el("section", {
      className: "card advice advice-" + advice.recommendation,
      "aria-labelledby": "advice-title",
      "data-recommendation": advice.recommendation,
    }, [
      el("h3", { id: "advice-title", text: tr("advice.title") }),
      el("p", { className: "advice-recommendation", text: tr("advice.rec." + advice.recommendation) }),
      advice.category
        ? el("p", {
          className: "advice-category",
          "data-category": advice.category,
          text: tr("advice.cat." + advice.category),
        })
        : null,
      advice.recommendation !== "watch" ? el("p", { text: tr("next.isolate") }) : null,
      noPhoto ? el("p", { className: "muted", text: tr("advice.no_photo") }) : null,
      el("h4", { text: tr("advice.why") }),
      el("ul", { className: "advice-rules" }, rules),
      el("p", { className: "muted" }, [
        document.createTextNode(
          tr("advice.version", { version: advice.version }) + " " + tr("next.always") + " "
        ),
        el("a", { href: "/guidance", text: tr("guidance.title") }),
      ]),
    ]);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
