// ES module entry: the same objects as the CommonJS entry, so
// `instanceof RetryableError` holds whichever way a file imported it.
import cjs from "./index.js";

export const {
  Worker,
  TaskerError,
  RetryableError,
  PermanentError,
  ConfigError,
  errorTypes,
  setLogger,
  setLogLevel,
  loadConfig,
} = cjs;
export default cjs;
