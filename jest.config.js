/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: "node",
  roots: ["<rootDir>/__tests__"],
  testMatch: ["**/*.test.ts"],
  transform: {
    "^.+\\.ts$": ["ts-jest", { tsconfig: "tsconfig.json" }],
  },
  testPathIgnorePatterns: ["/node_modules/", "/dist/"],
  testTimeout: 120000,
  // Two worker processes even on a 2-core machine: the addon must load in several workers at once.
  maxWorkers: 2,
};
