// The demo page in Debian's headless Chromium (playwright-core, no downloaded browser):
// alice in one browser context with two tabs, bob in another. Alice adds a todo in tab 1;
// it must appear in tab 2 within a second, never for bob; a toggle and a delete propagate.
// Prints one JSON line with what it measured and any failures; saves screenshots.
//
// Env: DEMO_URL (the demo app), CHROMIUM (path), ARTIFACTS (dir), TITLE (unique todo title),
//      SECRETS (comma-separated values that must never reach the browser)
import { chromium } from "playwright-core";
import { join } from "node:path";

const env = process.env;
const failures = [];
const measured = {};
const secrets = (env.SECRETS || "").split(",").filter(Boolean);
const demoOrigin = new URL(env.DEMO_URL).origin;

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage"],
});

async function open(context, user, label) {
  const page = await context.newPage();
  page.on("pageerror", (e) => failures.push(`${label}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") failures.push(`${label}: console: ${m.text()}`);
  });
  page.on("request", (r) => {
    const host = new URL(r.url()).hostname;
    if (host !== "127.0.0.1" && host !== "localhost") {
      failures.push(`${label}: request to another host (CDN?): ${r.url()}`);
    }
  });
  page.on("response", async (r) => {
    // nothing the page receives may contain a server secret
    const type = r.headers()["content-type"] || "";
    if (!/json|javascript|html|text/.test(type)) return;
    const body = await r.text().catch(() => "");
    for (const s of secrets) {
      if (body.includes(s)) failures.push(`${label}: a secret in the answer to ${r.url()}`);
    }
  });
  await page.goto(`${env.DEMO_URL}/?user=${user}`);
  await page.waitForSelector("[data-testid=status][data-state=live]", { timeout: 30000 });
  return page;
}

const item = (title) => `li[data-testid=todo][data-title="${title}"]`;

// Start watching `page` for `selector` to be present (or gone): a MutationObserver in the page
// notes the page's clock (ms since the epoch) when it happens, background tab or not.
// Returns a function that waits for that moment (null if it does not come within 5 s).
async function watch(page, selector, present = true) {
  const key = `${present}:${selector}`;
  await page.evaluate(([sel, want, k]) => {
    window.__seen ??= {};
    const ok = () => (document.querySelector(sel) !== null) === want;
    if (ok()) {
      window.__seen[k] = Date.now();
      return;
    }
    const observer = new MutationObserver(() => {
      if (ok()) {
        window.__seen[k] = Date.now();
        observer.disconnect();
      }
    });
    observer.observe(document.body, { subtree: true, childList: true, attributes: true });
  }, [selector, present, key]);
  return async () => {
    const handle = await page
      .waitForFunction((k) => window.__seen?.[k], key, { polling: 50, timeout: 5000 })
      .catch(() => null);
    return handle ? handle.jsonValue() : null;
  };
}

// When the browser sent the page's next `method` request to a URL containing `part` (epoch ms).
const sent = (page, method, part) =>
  page
    .waitForResponse((r) => r.request().method() === method && r.url().includes(part))
    .then((r) => r.request().timing().startTime);

// ms from the write request leaving `from` to the change showing in `to` (null: never).
async function propagation(from, to, selector, present, method, part, act) {
  const seen = await watch(to, selector, present);
  await from.bringToFront();
  const started = sent(from, method, part);
  await act();
  const [at, start] = [await seen(), await started];
  return at === null ? null : Math.round(at - start);
}

try {
  const aliceContext = await browser.newContext({ viewport: { width: 1180, height: 760 } });
  const bobContext = await browser.newContext({ viewport: { width: 1180, height: 760 } });
  const alice1 = await open(aliceContext, "alice", "alice tab 1");
  const alice2 = await open(aliceContext, "alice", "alice tab 2");
  const bob = await open(bobContext, "bob", "bob");
  measured.aliceInitial = await alice1.$$eval("li[data-testid=todo]", (els) => els.map((e) => e.dataset.title));
  measured.bobInitial = await bob.$$eval("li[data-testid=todo]", (els) => els.map((e) => e.dataset.title));

  // add in tab 1 -> tab 2
  const title = env.TITLE;
  await alice1.bringToFront();
  await alice1.fill("[data-testid=new-todo]", title);
  measured.addMs = await propagation(alice1, alice2, item(title), true, "POST", "/api/todos",
    () => alice1.click("[data-testid=add]"));
  await alice1.waitForSelector(item(title), { timeout: 5000 });

  // bob: a later change of his own arrives, alice's todo never does
  const bobTitle = `${title} (bob's)`;
  await bob.fill("[data-testid=new-todo]", bobTitle);
  measured.bobAddMs = await propagation(bob, bob, item(bobTitle), true, "POST", "/api/todos",
    () => bob.click("[data-testid=add]"));
  measured.bobSeesAlice = (await bob.$(item(title))) !== null;
  measured.aliceSeesBob = (await alice1.$(item(bobTitle))) !== null;

  // toggle in tab 2 -> tab 1
  measured.toggleMs = await propagation(alice2, alice1, `${item(title)}[data-done=true]`, true,
    "PATCH", "/api/todos/", () => alice2.click(`${item(title)} [data-testid=toggle]`));
  await alice1.bringToFront();
  await alice1.waitForTimeout(300); // let the panel settle on the latest request for the picture
  measured.panel = {
    request: await alice1.textContent("[data-testid=panel-request]"),
    claims: await alice1.textContent("[data-testid=panel-claims]"),
    rule: await alice1.textContent("[data-testid=panel-rule]"),
    upstream: await alice1.textContent("[data-testid=panel-upstream]"),
  };
  await alice1.screenshot({ path: join(env.ARTIFACTS, "demo-alice.png"), fullPage: true });
  await bob.screenshot({ path: join(env.ARTIFACTS, "demo-bob.png"), fullPage: true });

  const picker = await bobContext.newPage();
  await picker.goto(`${env.DEMO_URL}/`);
  await picker.waitForSelector("[data-testid=pick-alice]");
  await picker.screenshot({ path: join(env.ARTIFACTS, "demo-picker.png") });

  // delete in tab 1 -> gone from tab 2
  measured.deleteMs = await propagation(alice1, alice2, item(title), false, "DELETE",
    "/api/todos/", () => alice1.click(`${item(title)} [data-testid=delete]`));
  measured.bobSeesAliceAtEnd = (await bob.$(item(title))) !== null;
  measured.aliceFinal = await alice2.$$eval("li[data-testid=todo]", (els) => els.map((e) => e.dataset.title));
} catch (e) {
  failures.push(`script: ${e.stack || e}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ measured, failures }));
