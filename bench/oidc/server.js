// Reference OAuth2 token endpoint for bench/run.sh: node oidc-provider with one
// client_credentials client (HTTP Basic auth), opaque access tokens, in-memory store.
// Listens on 127.0.0.1:$PORT (0: any free port) and prints `listening on http://…`.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const provider = new Provider('http://127.0.0.1', {
  clients: [
    {
      client_id: 'bench',
      client_secret: 'bench-secret-0123456789abcdef',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api:read',
    },
  ],
  scopes: ['api:read'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
server.keepAliveTimeout = 60_000;
