import cliProgress from 'cli-progress';
import { formatSize } from '../units.js';

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '--:--';
  const t = Math.max(0, Math.round(s));
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  const mm = `${m}`.padStart(2, '0');
  const ss = `${sec}`.padStart(2, '0');
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export interface Progress {
  update: (done: number) => void;
  /** Ends the bar: `completed` draws it full; otherwise it stops where it was. */
  stop: (completed: boolean) => void;
}

/**
 * A progress bar on standard error (cli-progress), only when standard error is a terminal: bytes done
 * and total, rate (average since the start: holes make the instantaneous rate meaningless) and ETA.
 */
export function startProgress(total: number, label: string, stream: NodeJS.WriteStream = process.stderr): Progress | undefined {
  if (!stream.isTTY) return undefined;
  const started = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      stream,
      fps: 8,
      hideCursor: true,
      clearOnComplete: false,
      barsize: 30,
      format: (options, params) => {
        const elapsed = (Date.now() - started) / 1000;
        const rate = elapsed > 0 ? params.value / elapsed : 0;
        const eta = rate > 0 ? (params.total - params.value) / rate : Infinity;
        const pct = params.total > 0 ? Math.floor((params.value / params.total) * 100) : 100;
        const barText = cliProgress.Format.BarFormat(params.progress, options);
        return `${label} ${barText} ${`${pct}`.padStart(3)}% ${formatSize(params.value)} / ${formatSize(params.total)}  ${formatSize(rate)}/s  ETA ${formatSeconds(eta)}`;
      },
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  return {
    update: (done) => bar.update(done),
    stop: (completed) => {
      if (completed) bar.update(total);
      bar.stop();
    },
  };
}
