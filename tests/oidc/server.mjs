// oidc-provider (a certified OpenID provider) on loopback, for tokenproxy's tests.
// Configuration comes as JSON in OIDC_TEST_CONFIG: {clients: [...], ttl: seconds}.
// Prints "listening on <port>" once it serves; exits when stdin closes (the test ended).
// The authorization-code flow is completed by the development login and consent forms
// (tests/oidc_consent.py plays the browser): any login, any password. A refresh token comes
// with the code only for scope offline_access and prompt=consent in the authorization request,
// to a client whose grant_types include refresh_token. Refresh tokens rotate on every use;
// presenting a rotated-out one is invalid_grant and revokes the whole grant.
import { createServer } from 'node:http';
import { decodeJwt, importSPKI, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

// bearerIssuers: {iss: {key: SPKI PEM, alg}}: who may sign RFC 7523 jwt-bearer assertions.
const { clients, ttl = 600, bearerIssuers = {} } = JSON.parse(process.env.OIDC_TEST_CONFIG ?? '{}');
const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients,
  scopes: ['api:read', 'openid', 'offline_access', 'email', 'profile'],
  claims: { openid: ['sub'], email: ['email'], profile: ['name'] },
  // Every account exists: id X is X@example.test (the login typed into the dev form).
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() { return { sub, email: `${sub}@example.test`, name: `Test user ${sub}` }; },
    };
  },
  features: {
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: true },
  },
  rotateRefreshToken: true,
  ttl: { ClientCredentials: ttl, AccessToken: ttl },
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none',
  ],
});
provider.proxy = false;

// The extension grants, registered the way oidc-provider documents for grants it does not
// ship: its own client authentication, parameter parsing and error answers; the assertion
// verified by jose (another JOSE implementation than the proxy's PyJWT).
const seen = { jti: new Set(), exchanges: [], assertions: [] };
provider.registerGrantType('urn:ietf:params:oauth:grant-type:jwt-bearer', async (ctx) => {
  const { assertion, scope } = ctx.oidc.params;
  let payload;
  try {
    const trusted = bearerIssuers[decodeJwt(assertion).iss];
    if (!trusted) throw new Error('unknown issuer');
    ({ payload } = await jwtVerify(assertion, await importSPKI(trusted.key, trusted.alg), {
      algorithms: [trusted.alg],
      audience: ctx.oidc.urlFor('token'),
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti'],
      maxTokenAge: '1h',
    }));
  } catch (error) {
    throw new errors.InvalidGrant(`assertion rejected (${error.code ?? error.message})`);
  }
  if (seen.jti.has(payload.jti)) throw new errors.InvalidGrant('assertion replayed (jti)');
  seen.jti.add(payload.jti);
  seen.assertions.push(payload);
  const token = new provider.ClientCredentials({ client: ctx.oidc.client, scope });
  ctx.body = {
    access_token: await token.save(), token_type: 'Bearer', expires_in: token.expiration, scope,
  };
}, ['assertion', 'scope']);

const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
provider.registerGrantType('urn:ietf:params:oauth:grant-type:token-exchange', async (ctx) => {
  const params = ctx.oidc.params;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  const subject = await provider.ClientCredentials.find(params.subject_token);
  if (!subject || subject.isExpired) throw new errors.InvalidGrant('subject_token is not active');
  seen.exchanges.push({
    subject_client: subject.clientId, subject_jti: subject.jti, audience: params.audience,
    resource: params.resource, requested_token_type: params.requested_token_type,
  });
  const token = new provider.ClientCredentials({ client: ctx.oidc.client, scope: params.scope });
  ctx.body = {
    access_token: await token.save(), issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer', expires_in: token.expiration,
  };
}, [
  'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'requested_token_type', 'audience', 'resource', 'scope',
], ['resource', 'audience']);
// http:// issuer on loopback only: the provider refuses plain http for clients otherwise.
const callback = provider.callback();
// Test-only: approve a device's user code as the person at the verification page would (the
// page's own forms need a browser session); the token endpoint then issues as usual.
server.on('request', async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname === '/test/seen') {  // what the extension grants accepted, for the tests
    res.setHeader('Content-Type', 'application/json');
    return res.end(JSON.stringify({ ...seen, jti: [...seen.jti] }));
  }
  if (url.pathname !== '/test/approve') return callback(req, res);
  // Stored as the verification page stores it: upper case, without separators.
  const userCode = url.searchParams.get('user_code').toUpperCase().replace(/[^A-Z0-9]/g, '');
  const code = await provider.DeviceCode.findByUserCode(userCode);
  if (!code) { res.statusCode = 404; return res.end('no such user code'); }
  const scope = code.params.scope ?? 'openid';
  const grant = new provider.Grant({ accountId: 'device-user', clientId: code.clientId });
  grant.addOIDCScope(scope);
  Object.assign(code, {
    accountId: 'device-user', authTime: Math.floor(Date.now() / 1000),
    grantId: await grant.save(), scope,
  });
  await code.save();
  res.end('approved');
});
process.stdout.write(`listening on ${port}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
