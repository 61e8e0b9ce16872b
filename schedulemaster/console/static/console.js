// The console's one script: a confirm before destructive buttons, and the next fire times
// of a cron as it is typed (the server computes them: the same Quartz code the nodes use).
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  for (const input of document.querySelectorAll("input[data-preview]")) {
    const out = document.getElementById(input.dataset.preview);
    let timer = null;
    const show = async () => {
      if (!input.value.trim()) { out.textContent = ""; return; }
      const answer = await fetch("/cron/preview?cron=" + encodeURIComponent(input.value), {credentials: "same-origin"});
      const data = await answer.json();
      out.textContent = data.error ? data.error : data.fires.join("  ·  ");
      out.classList.toggle("error", Boolean(data.error));
    };
    input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(show, 250); });
    show();
  }
});
