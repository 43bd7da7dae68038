import { describe, expect, it } from 'vitest';
import { HOST_PID_MARGIN, HOST_PID_ROOM, planHostPids } from '../../scripts/testbed/host.js';

const LIMIT = 4_194_304; // the kernel's PID_MAX_LIMIT on 64-bit

describe('planHostPids: where a test host numbers its own processes', () => {
  it('per-namespace pid_max (Linux >= 6.14): from this machine\'s pid_max up, which no PID here can reach', () => {
    expect(planHostPids(32_768, LIMIT, 32_000)).toEqual({ start: 32_768, mode: 'disjoint' });
    expect(planHostPids(2_097_152, LIMIT, 1_500_000)).toEqual({ start: 2_097_152, mode: 'disjoint' });
  });

  it('one pid_max for all: at the top, while that lies far above every PID here', () => {
    expect(planHostPids(LIMIT, LIMIT, 40_000)).toEqual({ start: LIMIT - HOST_PID_ROOM, mode: 'above' });
    expect(planHostPids(2_097_152, 2_097_152, 2_097_152 - HOST_PID_ROOM - HOST_PID_MARGIN)).toMatchObject({ mode: 'above' });
  });

  it('no such range (a low pid_max, or PIDs here already high): counts from 1 and says what to do', () => {
    const low = planHostPids(32_768, 32_768, 300);
    expect(low.start).toBeUndefined();
    expect(low.mode).toBe('none');
    expect(low.warning).toMatch(/kernel\.pid_max is 32768/);
    expect(low.warning).toMatch(/scripts\/setup/);
    expect(planHostPids(LIMIT, LIMIT, LIMIT - HOST_PID_ROOM - HOST_PID_MARGIN + 1).mode).toBe('none');
  });
});
