// The dashboard shows a source whose creation's answer was never sent (nobody has its
// secret): a badge in the list, a notice on its page, both gone once a secret is issued.
// Then that the registry is read-only (a start on a full disk): a banner on every page, a
// refused change explained, the banner gone once it can be written again. Prints
// "PENDING SEEN" and "READ-ONLY SEEN" when the test is to change the registry's state.
// Debian's headless Chromium driven by playwright-core (tests/browser's node_modules).
// Env: ADMIN_URL, ADMIN_TOKEN, LOST_ID, KNOWN_ID, CHROMIUM, PLAYWRIGHT (package.json to
// resolve playwright-core from). Prints one JSON line with what the page showed.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const { chromium } = createRequire(env.PLAYWRIGHT)("playwright-core");
const profile = mkdtempSync(join(tmpdir(), "shapegate-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const out = { errors: [], alerts: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => out.errors.push(e.message));
  page.on("dialog", async (d) => { out.alerts.push(d.message()); await d.dismiss(); });
  await page.goto(env.ADMIN_URL + "/");
  await page.fill("#login-token", env.ADMIN_TOKEN);
  await page.click("#login-submit");
  const lost = `tr[data-source-id='${env.LOST_ID}']`;
  const known = `tr[data-source-id='${env.KNOWN_ID}']`;
  await page.waitForSelector(`${lost} .badge.pending`);
  await page.waitForSelector(known);
  out.lostRow = await page.textContent(lost);
  out.knownRow = await page.textContent(known);
  out.badgeTitle = await page.getAttribute(`${lost} .badge.pending`, "title");

  await page.click(`${lost} a.source-link`);
  out.notice = await page.textContent("#pending-notice:not([hidden])");
  await page.selectOption("#grace", "0");
  await page.click("#rotate-button");
  await page.waitForSelector("#secret-notice:has-text('New secret issued')");
  out.noticeAfterRotate = await page.isVisible("#pending-notice");
  await page.click("text=← All sources");
  await page.waitForSelector(`${lost} .badge`);
  out.lostRowAfter = await page.textContent(lost);

  // then the registry goes read-only (the test makes it so once it reads this line)
  console.log("PENDING SEEN");
  out.listBanner = await (await page.waitForSelector("#registry-banner:not([hidden])",
    { timeout: 30000 })).textContent();
  await page.click(`${known} a.source-link`);
  await page.waitForSelector("#source-name");
  out.sourcePageBanner = await page.isVisible("#registry-banner");
  await page.click("#pause-button");
  await page.waitForTimeout(300); // the refusal's alert
  console.log("READ-ONLY SEEN"); // and the test makes it writable again
  await page.waitForSelector("#registry-banner", { state: "hidden", timeout: 30000 });
  out.bannerGone = true;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
