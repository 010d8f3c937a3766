// shapegate admin dashboard: vanilla JS over the admin API (/api/...), no network assets.
// The admin token is kept in sessionStorage (this tab only) and sent as a Bearer header.
"use strict";
(() => {
  const TOKEN_KEY = "shapegate-admin-token";
  const app = document.getElementById("app");
  const logout = document.getElementById("logout");
  let info = null;
  let timer = null;
  let fresh = null; // {source_id, secret, what}: a secret just issued, shown once

  // -- helpers ---------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.field = body && body.field;
    }
  }

  // The source registry (sources.db) open read-only (the engine started on a full disk):
  // sources serve as they are, every change is refused until it can be written again.
  const banner = document.getElementById("registry-banner");
  function showRegistry(registry) {
    const why = registry && registry.read_only;
    banner.hidden = !why;
    if (!why) return;
    banner.replaceChildren(
      h("strong", {}, "Read-only: the engine cannot write its sources registry. "),
      "Registered sources are served as they are on disk, but creating, rotating, pausing, " +
      "resuming or deleting a source is refused until it can be written (is the disk of " +
      "the engine's data directory full?). It is retried every second. ",
      h("span", { class: "sub", id: "registry-reason" }, `(${why})`));
  }
  function refreshRegistry() {
    api("GET", "/api/info").then((i) => { info = i; }).catch(() => {});
  }

  async function api(method, path, body) {
    const headers = { authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || "") };
    if (body !== undefined) headers["content-type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("The admin token was not accepted. Sign in again.");
      throw new ApiError(401, data);
    }
    if (!resp.ok) {
      if (data && data.error === "store_unavailable" && path !== "/api/info") refreshRegistry();
      throw new ApiError(resp.status, data);
    }
    if (data && data.registry) showRegistry(data.registry);
    return data;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  function ago(iso) {
    if (!iso) return "–";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function when(iso) {
    return iso ? h("span", { title: iso }, ago(iso)) : "–";
  }

  function badge(state, id) {
    return h("span", { class: `badge state-${state}`, "data-state": state, id }, state);
  }

  // A source whose creation's answer was not recorded as sent (the engine stopped, or its
  // client left, around it): maybe nobody has its secret.
  const PENDING_TITLE = "The answer that created this source was never recorded as sent, so " +
    "maybe nobody has its secret. Send the same creation again to get the same secret, " +
    "rotate its secret, or delete it.";
  function pendingBadge(s) {
    return s.secret_delivered === false
      ? h("span", { class: "badge pending", title: PENDING_TITLE }, "no secret delivered")
      : null;
  }

  function copyButton(getText) {
    const b = h("button", { type: "button", class: "small" }, "Copy");
    b.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(getText()); b.textContent = "Copied"; }
      catch (_) { b.textContent = "Select and copy"; }
      setTimeout(() => { b.textContent = "Copy"; }, 1500);
    });
    return b;
  }

  function codeBlock(id, text) {
    const pre = h("pre", { id }, text);
    return h("div", { class: "copyable" }, pre, copyButton(() => pre.textContent));
  }

  function stopPolling() { if (timer) { clearInterval(timer); timer = null; } }

  function poll(fn) {
    stopPolling();
    timer = setInterval(() => { fn().catch(() => {}); }, 2000);
  }

  // -- sign in ---------------------------------------------------------------------------

  function showLogin(message) {
    stopPolling();
    banner.hidden = true;
    logout.hidden = true;
    document.getElementById("engine-url").textContent = "";
    const input = h("input", { id: "login-token", type: "password", autocomplete: "off",
      required: true, autofocus: true });
    const err = h("p", { class: "form-error", id: "login-error", hidden: !message }, message || "");
    const form = h("form", { id: "login-form" },
      h("label", {}, "Admin token",
        h("span", { class: "hint" }, "The engine's --admin-token (SYNC_ENGINE_ADMIN_TOKEN). " +
          "Kept in this browser tab only."), input),
      err,
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "primary", id: "login-submit" }, "Sign in")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        info = await api("GET", "/api/info");
        route();
      } catch (e) {
        if (e.status !== 401) { err.hidden = false; err.textContent = e.message; }
      }
    });
    app.replaceChildren(h("section", { class: "card narrow" },
      h("h1", {}, "Sign in"), h("p", { class: "muted" }, "Manage the databases this engine serves."),
      form));
    input.focus();
  }

  // -- list ------------------------------------------------------------------------------

  function sourceRow(s) {
    const problem = s.error || s.last_error;
    return h("tr", { "data-source-id": s.source_id },
      h("td", {}, h("a", { href: `#/sources/${s.source_id}`, class: "source-link" }, s.name),
        h("span", { class: "sub" }, s.source_id)),
      h("td", {}, ...[badge(s.state), pendingBadge(s)].filter(Boolean)),
      h("td", { class: "num" }, String(s.shape_count)),
      h("td", { class: "num" }, bytes(s.replication_lag_bytes)),
      h("td", { class: s.error ? "err" : "muted" }, problem
        ? [problem.length > 140 ? problem.slice(0, 139) + "…" : problem,
           s.error ? "" : h("span", { class: "sub" }, when(s.last_error_at))]
        : "–"),
      h("td", {}, when(s.created_at)));
  }

  async function showList() {
    const tbody = h("tbody", { id: "source-rows" });
    const empty = h("div", { class: "card empty", hidden: true },
      h("p", {}, "No sources yet. Register a Postgres database to get a source id and a secret."),
      h("a", { class: "button primary", href: "#/new" }, "New source"));
    const table = h("table", { class: "sources" },
      h("thead", {}, h("tr", {}, ["Name", "State", "Shapes", "Replication lag", "Last error",
        "Created"].map((t) => h("th", {}, t)))), tbody);
    app.replaceChildren(
      h("div", { class: "bar" }, h("h1", { class: "grow" }, "Sources"),
        h("a", { class: "button primary", href: "#/new", id: "new-source-button" }, "New source")),
      table, empty);
    async function refresh() {
      const data = await api("GET", "/api/sources");
      tbody.replaceChildren(...data.sources.map(sourceRow));
      table.hidden = data.sources.length === 0;
      empty.hidden = data.sources.length !== 0;
    }
    await refresh();
    poll(refresh);
  }

  // -- new source ------------------------------------------------------------------------

  function showNew() {
    stopPolling();
    const name = h("input", { id: "new-name", name: "name", required: true, maxlength: 64,
      autocomplete: "off", placeholder: "shop-production" });
    const url = h("input", { id: "new-url", name: "database_url", required: true,
      autocomplete: "off", spellcheck: "false",
      placeholder: "postgresql://user:password@host:5432/dbname" });
    const err = h("p", { class: "form-error", id: "new-error", hidden: true });
    const submit = h("button", { type: "submit", class: "primary", id: "new-submit" },
      "Create source");
    const form = h("form", { id: "new-source-form" },
      h("label", {}, "Name", h("span", { class: "hint" }, "Unique; letters, digits, space, . _ -"),
        name),
      h("label", {}, "Database URL", h("span", { class: "hint" },
        "Stored in the engine's data directory; the password is never shown again."), url),
      err,
      h("div", { class: "actions" }, submit, h("a", { href: "#/" }, "Cancel")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      err.hidden = true;
      try {
        const s = await api("POST", "/api/sources", { name: name.value, database_url: url.value });
        fresh = { source_id: s.source_id, secret: s.secret, what: "created" };
        location.hash = `#/sources/${s.source_id}`;
      } catch (e) {
        if (e.status === 401) return;
        err.textContent = e.message;
        err.hidden = false;
        (e.field === "name" ? name : e.field === "database_url" ? url : name).focus();
      } finally {
        submit.disabled = false;
      }
    });
    app.replaceChildren(
      h("p", {}, h("a", { href: "#/" }, "← All sources")),
      h("section", { class: "card" }, h("h1", {}, "New source"),
        h("p", { class: "muted" }, "Register a Postgres database. It needs:"),
        h("ul", { class: "requirements" },
          h("li", {}, h("code", {}, "wal_level = logical"), " (then restart Postgres)"),
          h("li", {}, "a role with ", h("code", {}, "REPLICATION"),
            ", CREATE on the database, owning the tables you sync"),
          h("li", {}, "a free replication slot and WAL sender")),
        form));
    name.focus();
  }

  // -- one source ------------------------------------------------------------------------

  function usage(s, secret) {
    const engine = (info && info.engine_url) || "http://127.0.0.1:3000";
    const secretLine = secret ? `export SOURCE_SECRET='${secret}'\n` : "# SOURCE_SECRET: this source's secret\n";
    const curl = `${secretLine}curl -i "${engine}/v1/shape?table=items&offset=-1` +
      `&source_id=${s.source_id}&secret=$SOURCE_SECRET"`;
    const proxy = `# shape-proxy config (e.g. config/proxy.yaml)\nupstream:\n  url: ${engine}\n` +
      `  source_id: ${s.source_id}\n  secret_env: ENGINE_SECRET   # export ENGINE_SECRET=<the secret>`;
    return [
      h("h3", {}, "Try it with curl"),
      h("p", { class: "muted" }, "Replace items with one of your tables."),
      codeBlock("curl-line", curl),
      h("h3", {}, "Proxy configuration"),
      h("p", { class: "muted" }, "Clients go through shape-proxy, which adds source_id and " +
        "the secret (from the environment) to every request it forwards."),
      codeBlock("proxy-snippet", proxy),
    ];
  }

  async function showSource(id) {
    stopPolling();
    let s;
    try {
      s = await api("GET", `/api/sources/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status === 404) {
        app.replaceChildren(h("p", {}, h("a", { href: "#/" }, "← All sources")),
          h("div", { class: "notice bad" }, "No such source (it may have been deleted)."));
      }
      return;
    }
    const secret = fresh && fresh.source_id === s.source_id ? fresh : null;
    const head = h("div", { class: "bar" });
    const errBox = h("div", { class: "notice bad", id: "source-error", hidden: true });
    const pendingBox = h("div", { class: "notice warn", id: "pending-notice", hidden: true },
      h("strong", {}, "Maybe nobody has this source's secret. "),
      "The answer that created it was never recorded as sent (the engine stopped, or the " +
      "client left, around it). To get its secret, send the same creation again (same name, " +
      "database URL and limits: it answers with the same secret), or rotate the secret " +
      "below; or delete the source.");
    const dl = h("dl", { class: "details" });
    const manage = h("div", { class: "row" });
    const rotateMsg = h("p", { class: "form-error", hidden: true });

    function render(s) {
      head.replaceChildren(h("h1", { id: "source-name" }, s.name), badge(s.state, "source-state"),
        h("span", { class: "grow" }));
      errBox.hidden = !s.error;
      errBox.textContent = s.error || "";
      pendingBox.hidden = s.secret_delivered !== false || Boolean(secret);
      const rows = [
        ["Source ID", h("span", { class: "row" }, h("code", { id: "source-id" }, s.source_id),
          copyButton(() => s.source_id))],
        ["Database", h("code", {}, s.database_url)],
        ["Shapes", String(s.shape_count)],
        ["Replication lag", bytes(s.replication_lag_bytes)],
        ["Initial syncs in progress", `${s.initial_syncs_in_progress}` +
          (s.limits.max_initial_syncs ? ` (limit ${s.limits.max_initial_syncs})` : "")],
        ["Shape limit", s.limits.max_shapes ? String(s.limits.max_shapes) : "none"],
        ["Slot / publication", h("code", {}, `${s.slot_name} / ${s.publication_name}`)],
        ["Created", when(s.created_at)],
        ["Secret rotated", when(s.secret_rotated_at)],
        ["Old secret valid until", s.previous_secret_expires_at || "–"],
        ["Last error", s.last_error ? [s.last_error, " (", when(s.last_error_at), ")"] : "–"],
      ];
      dl.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
      const pauseBtn = s.paused
        ? h("button", { type: "button", id: "resume-button", onclick: () => act("resume") }, "Resume")
        : h("button", { type: "button", id: "pause-button", onclick: () => act("pause") }, "Pause");
      manage.replaceChildren(pauseBtn,
        h("button", { type: "button", class: "danger", id: "delete-button", onclick: remove },
          "Delete source…"));
    }

    async function act(what) {
      try { render(await api("POST", `/api/sources/${s.source_id}/${what}`)); }
      catch (e) { if (e.status !== 401) alert(e.message); }
    }

    async function remove() {
      if (!confirm(`Delete source "${s.name}"? Its replication slot, publication and shape ` +
        "logs are removed, and its secret stops working.")) return;
      try {
        const res = await api("DELETE", `/api/sources/${s.source_id}`);
        if (res.warnings && res.warnings.length) alert(res.warnings.join("\n\n"));
        location.hash = "#/";
      } catch (e) { if (e.status !== 401) alert(e.message); }
    }

    const grace = h("select", { id: "grace", class: "inline" },
      h("option", { value: "0" }, "old secret stops now"),
      h("option", { value: "300" }, "old secret works 5 more minutes"),
      h("option", { value: "3600", selected: true }, "old secret works 1 more hour"),
      h("option", { value: "86400" }, "old secret works 1 more day"),
      h("option", { value: "604800" }, "old secret works 7 more days"));
    const rotate = h("form", { id: "rotate-form", class: "row" }, grace,
      h("button", { type: "submit", id: "rotate-button" }, "Rotate secret"));
    rotate.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      rotateMsg.hidden = true;
      try {
        const r = await api("POST", `/api/sources/${s.source_id}/rotate-secret`,
          { grace_period_seconds: Number(grace.value) });
        fresh = { source_id: r.source_id, secret: r.secret, what: "rotated" };
        showSource(r.source_id);
      } catch (e) {
        if (e.status !== 401) { rotateMsg.textContent = e.message; rotateMsg.hidden = false; }
      }
    });

    const secretNotice = secret && h("div", { class: "notice secret", id: "secret-notice" },
      h("strong", {}, secret.what === "created" ? "Source created. " : "New secret issued. "),
      "Store this secret now: it is shown only once.",
      h("code", { id: "new-secret" }, secret.secret),
      copyButton(() => secret.secret));

    render(s);
    // replaceChildren (unlike h) would turn a missing notice into the text "null"
    app.replaceChildren(...[
      h("p", {}, h("a", { href: "#/" }, "← All sources")),
      head, secretNotice, pendingBox, errBox,
      h("section", { class: "card" }, h("h2", {}, "Details"), dl),
      h("section", { class: "card" }, h("h2", {}, "Use it"), usage(s, secret && secret.secret)),
      h("section", { class: "card" }, h("h2", {}, "Secret"),
        h("p", { class: "muted" }, "Rotating issues a new secret. Keep the old one working " +
          "long enough to update the proxy's environment."), rotateMsg, rotate),
      h("section", { class: "card" }, h("h2", {}, "Manage"),
        h("p", { class: "muted" }, "Pausing stops replication but keeps the slot, so Postgres " +
          "keeps WAL for it; requests get 503 until resumed."), manage),
    ].filter(Boolean));
    poll(async () => {
      try {
        s = await api("GET", `/api/sources/${s.source_id}`);
        render(s);
        refreshRegistry();
      } catch (e) {
        if (e.status === 404) location.hash = "#/";
      }
    });
  }

  // -- routing ---------------------------------------------------------------------------

  function route() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
    logout.hidden = false;
    document.getElementById("engine-url").textContent = info ? `engine ${info.engine_url}` : "";
    const path = location.hash.replace(/^#/, "") || "/";
    const m = path.match(/^\/sources\/([0-9a-fA-F-]{36})$/);
    if (path === "/new") return showNew();
    if (m) return showSource(m[1]).catch(() => {});
    if (fresh) fresh = null;
    return showList().catch(() => {});
  }

  logout.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    fresh = null;
    showLogin();
  });
  window.addEventListener("hashchange", () => {
    if (fresh && !location.hash.includes(fresh.source_id)) fresh = null;
    route();
  });

  (async () => {
    if (sessionStorage.getItem(TOKEN_KEY)) {
      try { info = await api("GET", "/api/info"); } catch (_) { return; }
    }
    route();
  })();
})();
