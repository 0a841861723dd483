# Values of the test secrets. The leak check greps the host for each of them:
# they must reach a job only through the token service, never a file or log.
{
  apiToken = "fp-test-api-token-6d2b1f0e9c8a7b6d5e4f3a2b1c0d9e8f";
  github = "ghp-test-value-4f7e2a91c3b8d6e5f0a1b2c3d4e5f607";
  anthropic = "sk-ant-test-value-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
}
