// Validates PodMonitor and PrometheusRule objects (a JSON array on stdin) against prometheus-operator's CRD
// schemas, as packaged by kubernetes-models. Prints one line per object; exits 1 if any is invalid.
import { PodMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { PodMonitor, PrometheusRule };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
let failed = false;
for (const object of JSON.parse(Buffer.concat(chunks).toString())) {
  const Kind = kinds[object.kind];
  const name = `${object.kind}/${object.metadata?.name}`;
  if (!Kind) {
    console.log(`${name}: no CRD schema here`);
    failed = true;
    continue;
  }
  try {
    new Kind(object).validate();
    console.log(`${name}: valid`);
  } catch (error) {
    console.log(`${name}: INVALID ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
