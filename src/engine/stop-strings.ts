import { InvalidArgumentError } from "../errors.js";

/**
 * Stop strings over streamed text (the server's `stop`, `moira run --stop`): generated text is
 * appended piece by piece; what can be handed out is all of it but the tail where a stop string may
 * still be forming, and once a stop string appears the text ends where it starts.
 */
export class StopStrings {
  /** the text so far (cut at the stop string once one appeared) */
  text = "";
  /** the end of the text that is final (no stop string can begin before it) */
  private final = 0;
  private readonly holdBack: number;
  constructor(private readonly stops: readonly string[]) {
    for (const s of stops) if (s.length === 0) throw new InvalidArgumentError("a stop string must not be empty");
    this.holdBack = Math.max(0, ...stops.map((s) => s.length - 1));
  }
  /**
   * Appends `piece`. Returns the end of the final text and whether a stop string has appeared
   * (the text is then cut at its start, which is `final`).
   */
  add(piece: string): { final: number; stopped: boolean } {
    this.text += piece;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.text.indexOf(s, Math.max(0, this.final - s.length));
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.text = this.text.slice(0, cut);
      this.final = cut;
      return { final: cut, stopped: true };
    }
    this.final = Math.max(this.final, this.text.length - this.holdBack);
    return { final: this.final, stopped: false };
  }
}
