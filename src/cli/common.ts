/**
 * What the three commands (qcow-mount, qcow-info, qcow-export) share: version, commander set-up and
 * running a main function that reports any error as one line with its exit code (see ../exit.ts).
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { EXIT, type ExitCode, errorMessage, exitCodeFor } from '../exit.js';
import { packageRoot } from '../package-files.js';

let cachedVersion: string | undefined;

/** The package version, from package.json. */
export function packageVersion(): string {
  if (cachedVersion) return cachedVersion;
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('package.json', packageRoot), 'utf8')) as { version?: string };
    cachedVersion = pkg.version ?? '0.0.0';
  } catch {
    cachedVersion = '0.0.0';
  }
  return cachedVersion;
}

/** Prints `prog: message` (one line) on stderr. */
export function printError(prog: string, err: unknown): void {
  process.stderr.write(`${prog}: ${errorMessage(err)}\n`);
}

/**
 * Common commander set-up: `--version`, errors printed as one line `prog: problem` with exit code 1
 * (commander's own code for usage errors), help and version exiting 0.
 */
export function configureProgram(program: Command, prog: string, description: string): Command {
  exitQuietlyWhenStdoutCloses();
  return program
    .name(prog)
    .description(description)
    .version(packageVersion(), '-V, --version', 'print the version and exit')
    .helpOption('-h, --help', 'print this help and exit')
    .showSuggestionAfterError(true)
    .configureOutput({
      outputError: (str, write) => write(`${prog}: ${str.replace(/^error: /, '').trim().split(/\s*\n\s*/).join(' ')}\n`),
    });
}

/**
 * A reader that stops early (`qcow-export --help | head -3`) closes our standard output: like coreutils,
 * end quietly (with the exit code so far) instead of dying on the unhandled EPIPE with a stack trace.
 * The listener is added where process.stdout is first used, not before: making it turns a piped fd 1
 * non-blocking, and qcow-export's raw output to `-` writes fd 1 itself (and reports a broken pipe).
 */
let stdoutWatched = false;
function exitQuietlyWhenStdoutCloses(): void {
  if (stdoutWatched) return;
  stdoutWatched = true;
  const onError = (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit();
  };
  const made = Object.getOwnPropertyDescriptor(process, 'stdout');
  if (!made?.get || !made.configurable) {
    process.stdout.on('error', onError);
    return;
  }
  let stream: NodeJS.WriteStream | undefined;
  Object.defineProperty(process, 'stdout', {
    ...made,
    get(): NodeJS.WriteStream {
      if (!stream) {
        stream = made.get!.call(process) as NodeJS.WriteStream;
        stream.on('error', onError);
      }
      return stream;
    },
  });
}

/**
 * Parses argv without letting commander exit the process: undefined when the command should go on,
 * else the exit code (0 after --help or --version; 1 after a usage error, which commander has printed).
 */
export function parseArguments(program: Command, argv: string[]): ExitCode | undefined {
  program.exitOverride();
  try {
    program.parse(argv);
    return undefined;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') return EXIT.OK;
    return EXIT.USAGE;
  }
}

/** Runs a command's main function: any error becomes one line and its exit code. */
export function runMain(prog: string, main: () => Promise<number | void> | number | void, fallback: ExitCode = EXIT.INTERNAL): void {
  Promise.resolve()
    .then(main)
    .then(
      (code) => {
        if (typeof code === 'number') process.exitCode = code;
      },
      (err: unknown) => {
        printError(prog, err);
        if (process.env.QCOW_MOUNT_DEBUG_ERRORS && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
        process.exitCode = exitCodeFor(err, fallback);
      },
    );
}
