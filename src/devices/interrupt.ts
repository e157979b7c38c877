// Interrupt lines: the only way a device raises an interrupt.
//
// The VMM backs an InterruptLine with an irqfd (KVM_IRQFD) or a KVM_IRQ_LINE
// pulse; tests back it with a counter. Devices never call the hypervisor.

/** An edge-triggered interrupt: each `trigger()` delivers one edge. */
export interface InterruptLine {
  trigger(): void;
}

/**
 * A level-triggered interrupt: the device asserts while its condition holds and
 * deasserts when the guest clears it (irqfd with resamplefd behind it later).
 */
export interface LevelInterruptLine {
  setLevel(asserted: boolean): void;
}

/** An InterruptLine that does nothing (device with no IRQ wired). */
export const NO_INTERRUPT: InterruptLine = Object.freeze({ trigger(): void {} });

/** Test/diagnostic helper: counts edges. */
export class CountingInterrupt implements InterruptLine {
  count = 0;
  trigger(): void {
    this.count++;
  }
  /** Return the count and reset it to 0. */
  take(): number {
    const c = this.count;
    this.count = 0;
    return c;
  }
}

/** Test/diagnostic helper: records the level and the number of rising edges. */
export class RecordingLevelInterrupt implements LevelInterruptLine {
  level = false;
  risingEdges = 0;
  setLevel(asserted: boolean): void {
    if (asserted && !this.level) this.risingEdges++;
    this.level = asserted;
  }
}

/** Adapt a level line to an edge line: each trigger is a pulse (assert then deassert). */
export function pulseOf(line: LevelInterruptLine): InterruptLine {
  return {
    trigger(): void {
      line.setLevel(true);
      line.setLevel(false);
    },
  };
}
