// Test support: a real redis-server and a real `anomalydesk collect` started by the tests.
// (node --test also loads this file; it defines no tests.)
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../../../..');

export const anomalydeskBin = process.env.ANOMALYDESK_BIN
  ?? (existsSync(path.join(repo, '.venv/bin/anomalydesk')) ? path.join(repo, '.venv/bin/anomalydesk') : 'anomalydesk');
export const pythonBin = process.env.ANOMALYDESK_PYTHON
  ?? (existsSync(path.join(repo, '.venv/bin/python')) ? path.join(repo, '.venv/bin/python') : 'python3');

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Redis {
  constructor(port) {
    this.port = port;
    this.dir = mkdtempSync(path.join(tmpdir(), 'anomalydesk-js-redis-'));
    this.url = `redis://127.0.0.1:${port}/0`;
  }

  async start() {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '',
      '--appendonly', 'no', '--dir', this.dir], { stdio: 'ignore' });
    for (let i = 0; i < 500; i += 1) {
      const ping = spawnSync('redis-cli', ['-p', String(this.port), 'ping'], { encoding: 'utf8' });
      if (ping.stdout?.trim() === 'PONG') return this;
      await sleep(20);
    }
    throw new Error(`redis-server did not start on port ${this.port}`);
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    const exited = new Promise((resolve) => this.proc.once('exit', resolve));
    this.proc.kill('SIGTERM');
    await exited;
  }
}

export async function startRedis() {
  return new Redis(await freePort()).start();
}

/** `anomalydesk <args> --redis URL --json` → parsed JSON output. */
export function anomalydesk(redisUrl, ...args) {
  const run = spawnSync(anomalydeskBin, [...args, '--redis', redisUrl, '--json'], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`anomalydesk ${args.join(' ')} failed: ${run.stderr}`);
  return JSON.parse(run.stdout);
}

/** Seal closed windows and sum the `requests` feature of a service's fingerprints (via the Python API). */
export function fingerprintRequests(redisUrl, service) {
  const code = [
    'import sys, redis',
    'from anomalydesk.store import sink, fingerprints',
    'from anomalydesk.fingerprint import FEATURE_NAMES',
    'r = redis.Redis.from_url(sys.argv[1])',
    'sink.seal_all(r)',
    'i = FEATURE_NAMES.index("requests")',
    'print(int(sum(fp.vector[i] for fp in fingerprints.read(r, sys.argv[2]))))',
  ].join('\n');
  const run = spawnSync(pythonBin, ['-c', code, redisUrl, service], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`fingerprint read failed: ${run.stderr}`);
  return Number.parseInt(run.stdout.trim(), 10);
}

/** Start `anomalydesk collect` on a free port; resolves to { url, stop() }. */
export function startCollector(redisUrl, ...extra) {
  const proc = spawn(anomalydeskBin, ['collect', '--port', '0', '--redis', redisUrl, '--json', ...extra],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { proc.kill(); reject(new Error(`collector did not start: ${err}`)); }, 60_000);
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`collector exited ${code}: ${err}`)); });
    proc.stdout.on('data', (d) => {
      out += d;
      const match = out.match(/"listening":\s*"([^"]+)"/);
      if (match) {
        clearTimeout(timer);
        proc.removeAllListeners('exit');
        resolve({
          url: match[1],
          stderr: () => err,
          stop: () => new Promise((done) => {
            if (proc.exitCode !== null) { done(); return; }
            proc.once('exit', done);
            proc.kill('SIGTERM');
          }),
        });
      }
    });
  });
}
