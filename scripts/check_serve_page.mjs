// Drive the page of `python -m stages.serve` in headless Chromium: upload a film, wait for the answer,
// check the verdict, the probabilities, the Grad-CAM overlay and the flags are shown, screenshot it; then
// upload a file that is not an image and check the refusal is shown. Exit 1 naming what is missing.
//   node scripts/check_serve_page.mjs http://127.0.0.1:8765/ FILM NOT_AN_IMAGE OUT_DIR
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";

const [url, film, junk, out] = process.argv.slice(2);
const browser = await puppeteer.launch({ args: chromium.args, executablePath: await chromium.executablePath(), headless: true });
const page = await browser.newPage();
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
await page.setViewport({ width: 1100, height: 820 });
await page.goto(url, { waitUntil: "load" });

const input = await page.$("#file");
await input.uploadFile(film);
await page.waitForSelector("#result:not([hidden])", { timeout: 120000 });
await page.waitForFunction(() => document.getElementById("overlay").complete && document.getElementById("overlay").naturalWidth > 0);
const shown = await page.evaluate(() => ({
  verdict: document.getElementById("verdict").textContent,
  bars: document.querySelectorAll("#probs .bar").length,
  thresholds: document.querySelectorAll("#probs .bar i").length,
  overlay: document.getElementById("overlay").naturalWidth,
  ood: document.getElementById("ood").textContent,
  uncertainty: document.getElementById("uncertainty").textContent,
  reason: document.getElementById("reason").textContent,
}));
await page.screenshot({ path: `${out}/answer.png`, fullPage: true });

await input.uploadFile(junk);
await page.waitForSelector("#error:not([hidden])", { timeout: 60000 });
const refusal = await page.evaluate(() => document.getElementById("error").textContent);
await page.screenshot({ path: `${out}/refusal.png`, fullPage: true });
await browser.close();

console.log(JSON.stringify({ shown, refusal, errors }, null, 1));
const missing = [];
if (!shown.verdict) missing.push("verdict");
if (shown.bars < 2) missing.push("probability bars");
if (!shown.overlay) missing.push("Grad-CAM overlay");
if (!/\d/.test(shown.ood) || !/\d/.test(shown.uncertainty)) missing.push("ood / uncertainty flags");
if (!refusal.startsWith("Refused")) missing.push("the refusal message");
if (errors.length) missing.push("page errors: " + errors.join("; "));
if (missing.length) {
  console.error("check_serve_page: missing " + missing.join(", "));
  process.exit(1);
}
console.log(`check_serve_page: answer and refusal shown; screenshots in ${out}/`);
