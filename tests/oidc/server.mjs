// oidc-provider (a certified OpenID provider) on loopback, for tokenproxy's tests.
// Configuration comes as JSON in OIDC_TEST_CONFIG: {clients: [...], ttl: seconds}.
// Prints "listening on <port>" once it serves; exits when stdin closes (the test ended).
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const { clients, ttl = 600 } = JSON.parse(process.env.OIDC_TEST_CONFIG ?? '{}');
const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients,
  scopes: ['api:read'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: ttl },
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none',
  ],
});
provider.proxy = false;
// http:// issuer on loopback only: the provider refuses plain http for clients otherwise.
server.on('request', provider.callback());
process.stdout.write(`listening on ${port}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
