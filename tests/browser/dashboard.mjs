// Drive the admin dashboard in Debian's headless Chromium (playwright-core, no downloaded
// browsers) through every page state: sign-in (and its error), the empty list, the new-source
// form (and its error), a source right after create, the same page reloaded, after a rotate,
// a source in the error state, an unknown source, the list with sources, and sign-out.
// Each state is audited (no text "null"/"undefined", no element with `hidden` showing) and
// screenshotted (ARTIFACTS/dashboard-<state>.png). Prints a JSON line with what it read.
//
// Env: ADMIN_URL, ADMIN_TOKEN, DATABASE_URL, BROKEN_DATABASE_URL, SOURCE_NAME,
//      ARTIFACTS (dir), CHROMIUM (path)
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const profile = mkdtempSync(join(tmpdir(), "shapegate-chromium-"));
// a fresh profile directory (--user-data-dir) per run
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage"],
});
const failures = [];
const audited = [];
let expectedErrors = 0; // responses this script provokes on purpose (401, 400, 404)

// What a person would notice: a stray "null"/"undefined", or something meant to be hidden.
async function audit(page, state) {
  const problems = await page.evaluate(() => {
    const found = [];
    const text = document.body.innerText;
    for (const word of ["null", "undefined", "NaN", "[object Object]"]) {
      if (new RegExp(`(^|\\W)${word.replace(/[[\]]/g, "\\$&")}(\\W|$)`).test(text)) {
        found.push(`visible text contains "${word}"`);
      }
    }
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (["null", "undefined"].includes(n.data.trim())) {
        found.push(`text node "${n.data.trim()}" in <${n.parentElement.tagName.toLowerCase()}>`);
      }
    }
    for (const el of document.querySelectorAll("[hidden]")) {
      if (el.getClientRects().length > 0 && getComputedStyle(el).display !== "none") {
        found.push(`hidden element is visible: ${el.outerHTML.slice(0, 80)}`);
      }
    }
    return found;
  });
  for (const p of problems) failures.push(`${state}: ${p}`);
  audited.push(state);
  await page.screenshot({ path: join(env.ARTIFACTS, `dashboard-${state}.png`), fullPage: true });
}

try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (m.text().startsWith("Failed to load resource") && expectedErrors > 0) {
      expectedErrors--;
      return;
    }
    failures.push(`console: ${m.text()}`);
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(env.ADMIN_URL) && !r.url().startsWith("data:")) {
      failures.push(`request outside the admin listener: ${r.url()}`);
    }
  });

  await page.goto(env.ADMIN_URL + "/");
  await page.waitForSelector("#login-form");
  await audit(page, "sign-in");
  expectedErrors++;
  await page.fill("#login-token", "not-the-token-at-all");
  await page.click("#login-submit");
  await page.waitForSelector("#login-error:not([hidden])");
  await audit(page, "sign-in-error");
  await page.fill("#login-token", env.ADMIN_TOKEN);
  await page.click("#login-submit");
  await page.waitForSelector(".empty:not([hidden])");
  await audit(page, "list-empty");

  await page.click("#new-source-button");
  await page.waitForSelector("#new-source-form");
  await audit(page, "create");
  await page.fill("#new-name", env.SOURCE_NAME);
  await page.fill("#new-url", "this is not a connection string");
  expectedErrors++;
  await page.click("#new-submit");
  const formError = await page.textContent("#new-error:not([hidden])");
  await audit(page, "create-error");
  await page.fill("#new-url", env.DATABASE_URL);
  await page.click("#new-submit");

  await page.waitForSelector("#source-state[data-state='active']", { timeout: 60000 });
  const sourceId = (await page.textContent("#source-id")).trim();
  const secret = (await page.textContent("#new-secret")).trim();
  const curl = await page.textContent("#curl-line");
  const proxy = await page.textContent("#proxy-snippet");
  await audit(page, "detail-created");

  // the same page later (a reload, or from the list): the secret is not shown again
  await page.reload();
  await page.waitForSelector("#source-state[data-state='active']");
  const secretAfterReload = await page.$("#new-secret");
  await audit(page, "detail");

  // rotate the secret with the default grace period (1 hour): a new one is shown once
  await page.click("#rotate-button");
  await page.waitForSelector("#secret-notice:has-text('New secret issued')");
  const rotatedSecret = (await page.textContent("#new-secret")).trim();
  const oldValidUntil = await page.textContent("dl.details");
  await audit(page, "detail-rotated");

  await page.click("text=← All sources");
  await page.waitForSelector(`tr[data-source-id='${sourceId}'] .badge[data-state='active']`);
  await page.click(`tr[data-source-id='${sourceId}'] a.source-link`);
  await page.waitForSelector("#source-state[data-state='active']");
  await audit(page, "detail-from-list");

  // a source whose database does not exist: the error state
  await page.goto(env.ADMIN_URL + "/#/new");
  await page.waitForSelector("#new-source-form");
  await page.fill("#new-name", env.SOURCE_NAME + "-broken");
  await page.fill("#new-url", env.BROKEN_DATABASE_URL);
  await page.click("#new-submit");
  await page.waitForSelector("#source-state[data-state='error']", { timeout: 60000 });
  const brokenId = (await page.textContent("#source-id")).trim();
  await page.reload();
  await page.waitForSelector("#source-error:not([hidden])", { timeout: 30000 });
  const sourceError = await page.textContent("#source-error");
  await audit(page, "detail-error");

  expectedErrors++;
  await page.goto(env.ADMIN_URL + "/#/sources/00000000-0000-4000-8000-000000000000");
  await page.waitForSelector(".notice.bad");
  await audit(page, "unknown-source");

  await page.goto(env.ADMIN_URL + "/#/");
  await page.waitForSelector(`tr[data-source-id='${brokenId}'] .badge[data-state='error']`);
  await page.waitForSelector(`tr[data-source-id='${sourceId}'] .badge[data-state='active']`);
  const listed = await page.textContent(`tr[data-source-id='${sourceId}']`);
  await audit(page, "list");
  await page.screenshot({ path: join(env.ARTIFACTS, "dashboard.png"), fullPage: true });

  await page.click("#logout");
  await page.waitForSelector("#login-form");
  await audit(page, "signed-out");

  console.log(JSON.stringify({ sourceId, secret, rotatedSecret, oldValidUntil, curl, proxy,
    listed, formError, sourceError, secretShownAfterReload: secretAfterReload !== null,
    audited, failures }));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
