// ES module entry: the same objects as the CommonJS entry, so
// `instanceof RetryableError` holds whichever way a file imported it.
import cjs from "./index.js";

export const {
  Worker,
  TaskerError,
  HandlerError,
  RetryableError,
  PermanentError,
  ConfigError,
  WorkerError,
  WorkerRefused,
  errorTypes,
  setLogger,
  setLogLevel,
  loadConfig,
  Client,
  TaskHandle,
  ClientError,
  ValidationError,
  UnknownWorkflow,
  TaskNotFound,
  IdempotencyConflict,
  TaskEnded,
  Unauthorized,
  ServerUnavailable,
  WaitTimeout,
  ApiError,
} = cjs;
export default cjs;
