// Draw the diagrams with the mermaid.js shipped beside this file (no CDN, so the
// pages work offline, file:// included), in furo's light or dark colours.
document.addEventListener("DOMContentLoaded", () => {
  const theme = document.body.dataset.theme;
  const dark =
    theme === "dark" ||
    (theme !== "light" && window.matchMedia("(prefers-color-scheme: dark)").matches);
  mermaid.initialize({ startOnLoad: false, theme: dark ? "dark" : "default" });
  mermaid.run({ querySelector: "pre.mermaid" });
});
