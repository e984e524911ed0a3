// fetch(URL) through tokenproxy with undici's proxy agents, defaults kept (tunnel on):
// argv: agent ("proxy" | "env"), proxy URL, target URL. Prints "<status> <body>".
import { ProxyAgent, EnvHttpProxyAgent, fetch } from 'undici';

const [agentKind, proxy, target] = process.argv.slice(2);
const dispatcher = agentKind === 'env'
  ? new EnvHttpProxyAgent({ httpProxy: proxy, noProxy: '' })
  : new ProxyAgent(proxy);
const response = await fetch(target, { dispatcher });
process.stdout.write(`${response.status} ${await response.text()}\n`);
await dispatcher.close();
