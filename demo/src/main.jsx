// The make run demo: each user's todos, synced live through shape-proxy with useShape.
//
// Reads: useShape -> shape-proxy (/v1/shape, Authorization: Bearer <token>) -> sync engine.
// Writes: POST/PATCH/DELETE /api/todos on the demo server, which checks the same token.
// The panel asks the demo server to explain (proxy.explain) the latest request this page
// sent to the proxy: the token's claims, the rule that matched, the upstream URL (masked).
import { Fragment, StrictMode, useCallback, useEffect, useMemo, useState } from "react";
import { createRoot } from "react-dom/client";
import { useShape } from "@electric-sql/react";

const USERS = ["alice", "bob", "carol"];
const user = new URLSearchParams(window.location.search).get("user");

async function call(method, path, { token, body } = {}) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.message || `${method} ${path}: ${response.status}`);
  return data;
}

function Picker() {
  const [name, setName] = useState("");
  return (
    <main className="picker card">
      <h1>Pick a demo user</h1>
      <p>
        Each tab gets its own token from the demo server. Open the same user in two tabs and
        watch every change arrive live; another user never sees them.
      </p>
      <div className="users">
        {USERS.map((u) => (
          <a key={u} className="user-button" href={`/?user=${u}`} data-testid={`pick-${u}`}>
            <span className="avatar">{u[0].toUpperCase()}</span>
            {u}
          </a>
        ))}
      </div>
      <form
        className="other-user"
        onSubmit={(e) => {
          e.preventDefault();
          if (name.trim()) window.location.search = `?user=${encodeURIComponent(name.trim())}`;
        }}
      >
        <input
          value={name}
          onChange={(e) => setName(e.target.value.toLowerCase())}
          placeholder="or any name (a-z, 0-9)"
          aria-label="user name"
        />
        <button type="submit">Open</button>
      </form>
    </main>
  );
}

function Session() {
  const [session, setSession] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    call("POST", "/api/session", { body: { user } }).then(setSession, (e) => setError(e.message));
  }, []);
  if (error) return <p className="error card">Cannot start a session: {error}</p>;
  if (!session) return <p className="card muted">Getting a token for {user}…</p>;
  return <TodoApp session={session} />;
}

// A fetch for ShapeStream that reports each request it sends to the proxy (for the panel).
function useRecordingFetch() {
  const [request, setRequest] = useState(null);
  const fetchClient = useMemo(
    () => async (input, init) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      const path = url.pathname + url.search;
      const live = url.searchParams.get("live") === "true";
      setRequest({ path, live, status: null });
      const response = await fetch(input, init);
      setRequest({ path, live, status: response.status });
      return response;
    },
    [],
  );
  return [request, fetchClient];
}

function TodoApp({ session }) {
  const { token, proxy_url: proxyUrl } = session;
  const [request, fetchClient] = useRecordingFetch();
  const { data, isLoading, isError, error } = useShape({
    url: `${proxyUrl}/v1/shape`,
    params: { table: "todos" },
    headers: { Authorization: `Bearer ${token}` },
    fetchClient,
  });
  const todos = [...data].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const left = todos.filter((t) => !t.done).length;
  const [problem, setProblem] = useState(null);
  const write = useCallback(
    (method, path, body) =>
      call(method, path, { token, body }).then(
        () => setProblem(null),
        (e) => setProblem(e.message),
      ),
    [token],
  );
  const state = isError ? "error" : isLoading ? "connecting" : "live";

  return (
    <div className="layout">
      <header className="topbar">
        <div className="brand">
          shapegate <span className="muted">todos</span>
        </div>
        <div className={`status ${state}`} data-testid="status" data-state={state}>
          <span className="dot" /> {state}
        </div>
        <div className="who">
          <span className="avatar small">{user[0].toUpperCase()}</span>
          <span data-testid="user">{user}</span>
          <a href="/">switch user</a>
        </div>
      </header>
      <main className="card todos">
        <h1>{user}'s todos</h1>
        <AddTodo onAdd={(title) => write("POST", "/api/todos", { title })} />
        {problem && <p className="error">{problem}</p>}
        {isError && <p className="error">Sync failed: {String(error?.message || error)}</p>}
        <ul data-testid="todo-list">
          {todos.map((t) => (
            <li key={String(t.id)} className={t.done ? "done" : ""} data-testid="todo"
                data-title={t.title} data-done={String(t.done)}>
              <label>
                <input
                  type="checkbox"
                  checked={t.done}
                  data-testid="toggle"
                  onChange={() => write("PATCH", `/api/todos/${t.id}`, { done: !t.done })}
                />
                <span className="title">{t.title}</span>
              </label>
              <button className="delete" title="delete" data-testid="delete"
                      onClick={() => write("DELETE", `/api/todos/${t.id}`)}>
                ×
              </button>
            </li>
          ))}
        </ul>
        {!isLoading && todos.length === 0 && <p className="muted empty">Nothing to do.</p>}
        <footer className="muted">
          {isLoading ? "syncing…" : `${left} left · ${todos.length} in all`}
        </footer>
      </main>
      <ProxyPanel token={token} request={request} proxyUrl={proxyUrl} />
    </div>
  );
}

function AddTodo({ onAdd }) {
  const [title, setTitle] = useState("");
  const [busy, setBusy] = useState(false);
  return (
    <form
      className="add"
      onSubmit={async (e) => {
        e.preventDefault();
        if (!title.trim()) return;
        setBusy(true);
        await onAdd(title.trim());
        setTitle("");
        setBusy(false);
      }}
    >
      <input value={title} onChange={(e) => setTitle(e.target.value)} maxLength={200}
             placeholder="What needs doing?" data-testid="new-todo" aria-label="new todo" />
      <button type="submit" disabled={busy || !title.trim()} data-testid="add">Add</button>
    </form>
  );
}

function ProxyPanel({ token, request, proxyUrl }) {
  const [report, setReport] = useState(null);
  const path = request?.path;
  useEffect(() => {
    if (!path) return;
    let stale = false;
    call("POST", "/api/explain", { token, body: { url: path } }).then(
      (r) => !stale && setReport(r),
      (e) => !stale && setReport({ allowed: false, message: e.message }),
    );
    return () => {
      stale = true;
    };
  }, [path, token]);
  const claims = report?.claims || {};
  return (
    <aside className="card panel" data-testid="panel">
      <h2>What the proxy did</h2>
      <p className="muted">for this page's latest request, from <code>proxy.explain</code></p>
      <Field label="request" testid="panel-request">
        {request ? (
          <>
            <span className="badge">{request.live ? "live long-poll" : "catch-up"}</span>{" "}
            <span className="badge">{request.status ?? "waiting…"}</span>
            <code className="url">GET {proxyUrl}{request.path}</code>
          </>
        ) : (
          "—"
        )}
      </Field>
      <Field label="token claims (verified)" testid="panel-claims">
        {report?.claims ? (
          <dl className="claims">
            {["sub", "iss", "aud"].map((k) => (
              <Fragment key={k}>
                <dt>{k}</dt>
                <dd>{String(claims[k])}</dd>
              </Fragment>
            ))}
            <dt>exp</dt>
            <dd>{claims.exp ? new Date(claims.exp * 1000).toLocaleString() : "?"}</dd>
          </dl>
        ) : (
          "—"
        )}
      </Field>
      <Field label="rule" testid="panel-rule">
        {report?.allowed ? (
          <div>
            <span className="badge">{report.rule}</span> on <code>{report.table}</code>
            <code className="url">
              where {report.where}
              {(report.params || []).map((p, i) => `, $${i + 1} = '${p}'`).join("")}
            </code>
          </div>
        ) : report ? (
          <span className="error">{report.message || report.reason || "refused"}</span>
        ) : (
          "—"
        )}
      </Field>
      <Field label="upstream request (engine secret masked)" testid="panel-upstream">
        {report?.upstream_url ? <UrlLines url={report.upstream_url} /> : "—"}
      </Field>
    </aside>
  );
}

// A URL with one query parameter a line, decoded for reading.
function UrlLines({ url }) {
  const [base, query = ""] = url.split("?");
  const parts = query.split("&").filter(Boolean).map(decode);
  return (
    <code className="url lines">
      <span>{base}?</span>
      {parts.map((p, i) => (
        <span key={i}>
          {i ? "&" : ""}
          {p}
        </span>
      ))}
    </code>
  );
}

function decode(text) {
  try {
    return decodeURIComponent(text.replaceAll("+", " "));
  } catch {
    return text;
  }
}

function Field({ label, testid, children }) {
  return (
    <section className="field" data-testid={testid}>
      <div className="label">{label}</div>
      <div>{children}</div>
    </section>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>{user ? <Session /> : <Picker />}</StrictMode>,
);
