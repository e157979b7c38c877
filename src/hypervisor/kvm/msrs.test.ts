// MSR restore order and the MSRs added to KVM's list (no /dev/kvm needed).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EXTRA_STATE_MSRS, MSR_IA32_CR_PAT, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, MSR_MTRR_DEF_TYPE, orderStateMsrs } from './msrs.js';

test('MSR restore order: TSC first, TSC_DEADLINE last, others in list order, no duplicates', () => {
  assert.deepEqual(orderStateMsrs([0x174, MSR_IA32_TSC_DEADLINE, 0xc0000081, MSR_IA32_TSC, 0x174, 0x3b]),
    [MSR_IA32_TSC, 0x174, 0xc0000081, 0x3b, MSR_IA32_TSC_DEADLINE]);
  assert.deepEqual(orderStateMsrs([0x277]), [0x277]);
  assert.deepEqual(orderStateMsrs([]), []);
});

test('MTRRs (default type, 8 variable pairs, 11 fixed) and PAT are added to the saved MSRs', () => {
  assert.ok(EXTRA_STATE_MSRS.includes(MSR_MTRR_DEF_TYPE));
  assert.ok(EXTRA_STATE_MSRS.includes(MSR_IA32_CR_PAT));
  assert.equal(EXTRA_STATE_MSRS.filter((i) => i >= 0x200 && i < 0x210).length, 16);
  assert.equal(EXTRA_STATE_MSRS.filter((i) => i >= 0x250 && i < 0x270).length, 11);
});
