// Bars carry their length in data-percent: the Content Security Policy refuses inline
// style attributes, and setting the width from a script file is allowed.
"use strict";
document.querySelectorAll("[data-percent]").forEach((bar) => {
  const percent = Number.parseFloat(bar.dataset.percent);
  if (Number.isFinite(percent)) {
    bar.style.width = `${Math.min(Math.max(percent, 0), 100)}%`;
  }
});
