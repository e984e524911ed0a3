// fetch(URL) through tokenproxy with undici's proxy agents, defaults kept (tunnel on):
// argv: agent ("proxy" | "env"), proxy URL, target URL[, CA file to trust for https].
// Prints "<status> <body>".
import { readFileSync } from 'node:fs';
import { ProxyAgent, EnvHttpProxyAgent, fetch } from 'undici';

const [agentKind, proxy, target, caFile] = process.argv.slice(2);
const requestTls = caFile ? { ca: readFileSync(caFile) } : undefined;
const dispatcher = agentKind === 'env'
  ? new EnvHttpProxyAgent({ httpProxy: proxy, httpsProxy: proxy, noProxy: '', requestTls })
  : new ProxyAgent({ uri: proxy, requestTls });
const response = await fetch(target, { dispatcher });
process.stdout.write(`${response.status} ${await response.text()}\n`);
await dispatcher.close();
