// Open a `dvc plots show` page in headless Chromium with the network cut off, screenshot it, and
// check every plot drew: each vegaEmbed target holds a canvas with non-background pixels (or an SVG
// with marks), each image plot decoded. Exit 1 naming the plots that did not.
//   node scripts/check_plots_render.mjs dvc_plots/index.html shot.png
// Needs puppeteer-core and @sparticuz/chromium (npm registry): scripts/check_plots_render.sh installs them.
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

const [page_path, shot] = process.argv.slice(2);
const html = readFileSync(page_path, "utf8");
const body = html.slice(html.indexOf("<body>"));
const ids = [...body.matchAll(/vegaEmbed\('#([^']+)'/g)].map((m) => m[1]);
const empty = new Set([...body.matchAll(/var spec = \{\};\s*vegaEmbed\('#([^']+)'/g)].map((m) => m[1]));

const browser = await puppeteer.launch({ args: chromium.args, executablePath: await chromium.executablePath(), headless: true });
const page = await browser.newPage();
const outside = [];
const errors = [];
await page.setRequestInterception(true);
page.on("request", (r) => (r.url().startsWith("file:") || r.url().startsWith("data:") ? r.continue() : (outside.push(r.url()), r.abort())));
page.on("pageerror", (e) => errors.push(String(e)));
await page.setViewport({ width: 1400, height: 900 });
await page.goto("file://" + resolve(page_path), { waitUntil: "load" });
await new Promise((r) => setTimeout(r, 3000));
const report = await page.evaluate((ids) => {
  return ids.map((id) => {
    const el = document.getElementById(id);
    if (!el) return { id, drawn: false, why: "no element" };
    const canvas = el.querySelector("canvas");
    if (canvas && !(canvas.width && canvas.height)) return { id, drawn: false, why: "an empty 0x0 canvas (the spec failed)" };
    if (canvas) {
      const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
      let ink = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240)) ink++;
      return { id, drawn: ink > 500, why: `${ink} drawn pixels on a ${canvas.width}x${canvas.height} canvas` };
    }
    const marks = el.querySelectorAll("svg path, svg rect, svg text").length;
    return { id, drawn: marks > 5, why: marks ? `${marks} svg marks` : "no canvas or svg" };
  });
}, ids);
const images = await page.evaluate(() => [...document.images].map((i) => ({ src: i.src.slice(-60), ok: i.complete && i.naturalWidth > 0 })));
if (shot) await page.screenshot({ path: shot, fullPage: true });
await browser.close();

let failed = 0;
for (const r of report) {
  const skip = empty.has(r.id);
  if (!r.drawn && !skip) failed++;
  console.log(`${skip ? "n/a " : r.drawn ? "ok  " : "FAIL"} ${r.id}: ${skip ? "no data for this task (empty spec)" : r.why}`);
}
for (const i of images) {
  if (!i.ok) failed++;
  console.log(`${i.ok ? "ok  " : "FAIL"} image ${i.src}`);
}
for (const u of outside) console.log(`FAIL network request (the page must draw offline): ${u}`);
for (const e of errors) console.log(`FAIL page error: ${e}`);
failed += outside.length + errors.length;
console.log(failed ? `${failed} plot(s) not drawn` : `every plot drawn (${report.length - empty.size} charts, ${images.length} images)`);
process.exit(failed ? 1 : 0);
