// The jobs (#/jobs): dead letters first, with retry and cancel.
import {
  JOB_STATES, actionButton, actionButtons, api, badge, deniedNote, flowHref, h, main, newView,
  problem, select, short, when,
} from "./common.js";

const JOBS_EVERY = 3000;

function jobFailures(job) {
  const f = job.failures;
  if (!f) return [];
  const list = Array.isArray(f) ? f.map((x) => [x && x.atom, x]) : Object.entries(f);
  return list.filter(([, x]) => x && typeof x === "object");
}

// A job's flow has the job's id, once a conductor started it.
function jobLink(job) {
  const text = job.name || job.id;
  return job.attempts > 0 ? h("a", { href: flowHref(job.id), title: "its flow" }, text)
    : h("strong", null, text);
}

export function jobsView(params) {
  const view = newView();
  const state = JOB_STATES.includes(params.get("state")) ? params.get("state") : "";
  const filters = h("form", { class: "filters", id: "job-filters" },
    select("state-filter", "State", JOB_STATES, state));
  filters.addEventListener("change", () => {
    const s = filters.querySelector("#state-filter").value;
    location.hash = s ? `#/jobs?state=${encodeURIComponent(s)}` : "#/jobs";
  });
  filters.addEventListener("submit", (e) => e.preventDefault());
  const dead = h("div", { id: "dead-letters" });
  const body = h("tbody", { id: "jobs" });
  const error = h("div");
  const result = h("p", { class: "action-result", id: "job-result", role: "status" });

  main.replaceChildren(
    h("section", { class: "card dead" }, h("h1", null, "Dead letters"),
      h("p", { class: "muted" }, "Jobs whose flow failed (state FAILED). Retry one to post it again."),
      dead),
    h("section", { class: "card" },
      h("div", { class: "head" }, h("h1", null, "Jobs"), filters),
      deniedNote("jobs-denied"), error, result,
      h("table", { class: "jobs" },
        h("thead", null, h("tr", null, ["Job", "Flow", "State", "Owner", "Attempts", "Created",
          "Updated", "Status", ""].map((t) => h("th", null, t)))),
        body)));

  async function jobAction(job, verb) {
    result.className = "action-result";
    result.textContent = `${verb}…`;
    const answer = await api("POST", `jobs/${encodeURIComponent(job.id)}/${verb}`, {});
    if (view.disposed) return;
    result.className = answer.ok ? "action-result ok" : "action-result failed";
    if (!answer.ok) {
      result.textContent = `${verb} ${job.id} refused (${answer.status}): ${answer.error}`;
    } else {
      const now = answer.data && answer.data.job && typeof answer.data.job === "object" ? answer.data.job : null;
      if (verb === "retry" && now && now.id !== job.id) {
        // Its flow had ended (reverted): the board posted a new job with the same flow
        // and inputs, and the failed one stays as it was.
        result.replaceChildren(`retry ${job.id}: done, as a new job `,
          h("a", { href: flowHref(now.id) }, now.id), ` (${now.state}).`);
      } else {
        result.textContent = `${verb} ${job.id}: done${now ? ` (${now.state})` : ""}.`;
      }
    }
    await refresh();
  }

  function buttonsFor(job) {
    const out = [];
    if (job.state === "FAILED") {
      out.push(actionButton(view, "Retry", { class: "retry", "data-help": "Post the job again" },
        () => jobAction(job, "retry")));
    }
    if (job.state !== "FAILED" && job.state !== "COMPLETE") {
      out.push(actionButton(view, "Cancel", { class: "danger cancel", "data-help": "Cancel the job and its flow" },
        () => jobAction(job, "cancel")));
    }
    return out;
  }

  function failuresList(job) {
    return jobFailures(job).map(([atom, f]) => {
      const node = h("div", { class: "failure" }, h("strong", null, String(atom)), " ",
        h("span", { class: "error-text" }, `${f.type || "Error"}: ${f.message || ""}`));
      if (f.traceback) {
        node.append(h("details", null, h("summary", null, "traceback"),
          h("pre", { class: "traceback" }, String(f.traceback))));
      }
      return node;
    });
  }

  let buttonsMade = [];
  async function refresh() {
    const [all, failed] = await Promise.all([
      api("GET", state ? `jobs?state=${encodeURIComponent(state)}` : "jobs"),
      api("GET", "jobs?state=FAILED"),
    ]);
    if (view.disposed) return;
    buttonsMade.forEach((b) => actionButtons.delete(b));
    buttonsMade = [];
    if (all.status === 404) {
      error.replaceChildren(problem(`No job board: ${all.error}. Serve the app with create_app(..., board=...) to see jobs.`));
      body.replaceChildren();
      dead.replaceChildren();
      return;
    }
    if (!all.ok || !all.data || !Array.isArray(all.data.jobs)) {
      error.replaceChildren(problem(`The jobs cannot be listed: ${all.error || "unexpected answer"}`));
      return;
    }
    error.replaceChildren();
    const track = (nodes) => {
      buttonsMade.push(...nodes);
      return nodes;
    };
    body.replaceChildren(...all.data.jobs.map((job) => h("tr", { dataset: { jobId: job.id, state: job.state } },
      h("td", { class: "name" }, jobLink(job), h("div", { class: "id" }, job.id)),
      h("td", null, h("code", null, String(job.flow))),
      h("td", null, badge("job", job.state)),
      h("td", { class: "owner" }, job.owner ? h("code", null, short(job.owner, 28)) : h("span", { class: "muted" }, "—")),
      h("td", { class: "num" }, String(job.attempts ?? "")),
      h("td", null, when(job.created)),
      h("td", null, when(job.updated)),
      h("td", null, job.status ? badge("status", job.status) : ""),
      h("td", { class: "buttons" }, track(buttonsFor(job))))));
    const letters = failed.ok && failed.data && Array.isArray(failed.data.jobs) ? failed.data.jobs : [];
    dead.replaceChildren(...(letters.length ? letters.map((job) => h("article", { class: "letter", dataset: { jobId: job.id } },
      h("div", { class: "letter-head" },
        jobLink(job), " ",
        h("code", null, String(job.flow)), " ", job.status ? badge("status", job.status) : "",
        h("span", { class: "muted" }, ` · ${job.attempts ?? 0} attempt(s) · `), when(job.updated),
        h("span", { class: "buttons" }, track(buttonsFor(job)))),
      failuresList(job))) : [h("p", { class: "muted", id: "no-dead-letters" }, "None.")]));
  }

  refresh();
  view.every(JOBS_EVERY, refresh);
  return view;
}
