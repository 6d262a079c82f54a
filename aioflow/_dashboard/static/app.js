// The aioflow dashboard: a single page over the app's JSON API, with hash routes
//   #/            flows (filters in the hash: #/?status=RUNNING&name=backup&limit=20)
//   #/flows/{id}  one flow: graph, atoms, waits, events (live), actions
//   #/jobs        jobs, dead letters first (#/jobs?state=FAILED)
// Every URL is relative, so the page works wherever the app is mounted.
import { probeActions } from "./common.js";
import { flowView } from "./flow.js";
import { flowsView } from "./flows.js";
import { jobsView } from "./jobs.js";

let current = null;

function route() {
  if (current) current.dispose();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const match = path.match(/^\/flows\/(.+)$/);
  let page = "flows";
  document.title = "aioflow";
  if (match) {
    let id;
    try {
      id = decodeURIComponent(match[1]);
    } catch (err) {
      id = match[1];
    }
    current = flowView(id);
  } else if (path === "/jobs") {
    page = "jobs";
    current = jobsView(params);
  } else {
    current = flowsView(params);
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === page);
  }
}

window.addEventListener("hashchange", route);
route();
probeActions();
