"""The copy-heavy prompt set of the benchmarks (mtbench_speedup.py --prompts copy): answers that should reuse long
spans of the prompt, where prompt lookup shines. The passages are original text written for this benchmark."""
from __future__ import annotations

from specdec.data import Question

_HARBOUR = (
    "The harbour town of Kessel Point grew up around a single stone pier built in 1842 to shelter fishing boats "
    "from the winter storms that sweep in from the north-west. For most of the nineteenth century the town lived "
    "on herring: every autumn the shoals arrived, the boats went out before dawn, and the women of the town gutted "
    "and salted the catch in long wooden sheds along the shore. When the herring vanished in the 1920s, nobody "
    "could say exactly why. Some blamed overfishing, others a change in the sea currents, and a few older "
    "fishermen insisted the fish had simply grown tired of the town. The sheds were abandoned, and many young "
    "families left for the cities inland. The town survived by reinventing itself twice. In the 1950s a ferry "
    "service to the islands brought a steady trickle of visitors, and the old salting sheds became cafés, a "
    "small museum and a boatyard that repairs wooden yachts. Since 2010 a cluster of small offshore wind "
    "turbines has provided work for engineers and technicians, who now outnumber the remaining fishermen by "
    "roughly four to one. The stone pier still stands, and on calm evenings residents walk its length to watch "
    "the turbines turn slowly against the sunset."
)
_GARDEN = (
    "A community garden works best when everyone knows what is expected of them before the first seed is sown. "
    "At the Elm Street garden, each member rents one raised bed for the season at a cost of twenty dollars, which "
    "pays for water, compost and the repair of shared tools. Members must visit their bed at least once a week "
    "between April and October, and a bed left untended for three weeks is offered to the next person on the "
    "waiting list. Chemical pesticides are not allowed anywhere on the site, because the garden borders a "
    "children's playground and a small pond used by frogs and dragonflies. Instead, members are encouraged to "
    "plant marigolds and nasturtiums between their vegetables and to pick off slugs by hand in the early "
    "morning. The tool shed is unlocked with a four-digit code that changes every month and is posted in the "
    "members' newsletter. On the first Saturday of each month there is a shared work morning, when members "
    "turn the compost heaps, weed the paths and mend the fence. Attendance is voluntary but warmly appreciated, "
    "and the garden committee provides coffee and pastries for everyone who comes."
)
_LETTER = (
    "Dear neighbours, i am writing to let you know about the changes to the bin collection that starts next "
    "month. From the first of march the general waste bin will be collected every two week instead of every "
    "week, but the recycling bin will be collected weekly, which mean you should put more of your rubbish in "
    "the recycling if it can be recycled. Food waste will go in the small brown caddy, it will be emptied every "
    "tuesday morning. Please make sure your bins is out by seven o'clock, because the lorries has started "
    "coming earlier then before. If your bin is too heavy the crew wont lift it, so dont overfill it with "
    "garden waste, there is a separate service for that which cost thirty pound per year. Several residents "
    "has asked whether the old collection calender is still valid, it is not, and a new one will be post "
    "through every door by the end of february. If you has any questions you can email the council or come "
    "to the residents meeting on the twelfth, were a officer from the waste department will answer question. "
    "Thank you for you patience while everyone get used to the new system. Best wishes, Margaret from number 14."
)
_REPORT = (
    "this quarter our team have focused on reducing the time it take for customers to get an answer from "
    "support. In january the average first reply time were eleven hours, by the end of march it had fell to "
    "four hours and twenty minutes. The biggest improvement come from the new triage rota, where one person "
    "each morning sort the overnight tickets by urgency before the rest of the team starts work. We also "
    "wrote thirty new help articles, which answers the most common questions about billing and passwords, and "
    "tickets about those topics has dropped by almost a third. Not everything went good. The chat widget we "
    "tested in february confused many customers, because it appeared on pages where nobody were available to "
    "reply, and we switched it off after three weeks. Staff also reported that the new rota make mornings "
    "stressful for whoever is on triage duty, so next quarter we will split the job between two people and "
    "rotate it daily. Our goal for the next quarter are to bring first reply time under three hours without "
    "hiring additional staff, and to publish another twenty articles based on what customers actually ask."
)
_RECIPE = (
    "Grandmother Ilse's apple cake has been baked in our family for three generations, and the recipe has "
    "never been written down properly until now. Start by heating the oven to 180 degrees Celsius and greasing "
    "a round tin about 24 centimetres across. Beat 150 grams of soft butter with 140 grams of sugar until the "
    "mixture is pale, then add three eggs one at a time, beating well after each. Stir in the grated zest of "
    "one lemon and a pinch of salt. Fold in 200 grams of plain flour mixed with two teaspoons of baking powder, "
    "and loosen the batter with 60 millilitres of milk. Spread the batter in the tin. Peel and core four small "
    "sour apples, cut each into quarters, and score the rounded side of each quarter several times with a knife "
    "so that it fans open in the oven. Press the quarters into the batter in a ring, scored side up. Bake for "
    "45 to 50 minutes, until a skewer pushed into the middle comes out clean. While the cake is still warm, "
    "brush it with two tablespoons of warmed apricot jam and dust it with icing sugar. It keeps for three days "
    "under a cloth, though in our house it has never lasted that long."
)
_MEETING = (
    "Minutes of the library board meeting held on 9 October. Present: Dana Okafor (chair), Luis Brandt "
    "(treasurer), Priya Shah, Tom Eriksen and Mei Lin; apologies from Sam Dubois. The chair opened the meeting "
    "at 6:30 pm and the minutes of the September meeting were approved without changes. The treasurer reported "
    "that the autumn book sale raised 2,340 dollars, slightly more than last year, and that the heating repair "
    "in the reading room cost 1,150 dollars, which was within the maintenance budget. Priya Shah presented a "
    "proposal to extend Saturday opening hours from 1 pm to 4 pm for a six-month trial starting in January; the "
    "board approved it by four votes to one, with Tom Eriksen voting against because of staffing concerns. "
    "Mei Lin reported that the children's reading club now has 48 members and asked for 300 dollars for new "
    "picture books, which was approved unanimously. The board agreed that Luis Brandt will request three "
    "quotes for replacing the front steps before the next meeting. The next meeting will be held on 13 "
    "November at 6:30 pm in the community room. The chair closed the meeting at 7:45 pm."
)
_TRAIL = (
    "The Ridgeback Trail is a twelve-kilometre loop that climbs from the Alder Creek car park to the summit of "
    "Grey Knoll and returns along the eastern ridge. The first three kilometres follow the creek through an old "
    "beech forest on a wide, gentle path that is suitable for families. After the wooden footbridge the trail "
    "turns sharply uphill, gaining about four hundred metres of height in less than two kilometres, and the "
    "surface becomes loose gravel that can be slippery after rain. The summit has a stone shelter, a "
    "direction table and, on clear days, views across three valleys to the coast. The descent along the "
    "eastern ridge is exposed to the wind and has no shade, so walkers should carry at least two litres of "
    "water in summer. Dogs are welcome but must be kept on a lead between March and July, when ground-nesting "
    "birds breed on the ridge. Most walkers need between four and five hours for the full loop. The car park "
    "fills up early at weekends, and a shuttle bus runs from the village of Hollin every hour from 8 am, "
    "stopping at the trailhead on request."
)
_POLICY = (
    "Our shop accepts returns of unused items within thirty days of delivery, as long as they are in their "
    "original packaging and come with the receipt or order number. Sale items can be returned for store credit "
    "but not for a refund. To start a return, customers fill in the form on the back of the delivery note and "
    "either bring the parcel to any of our branches or send it with the prepaid label included in the box. "
    "Refunds are made to the original payment method within five working days of the parcel reaching our "
    "warehouse, and customers receive an email when the refund has been issued. Faulty items can be returned "
    "at any time within one year; in that case we also repay the original delivery cost. Custom-made "
    "furniture, opened bedding and gift cards cannot be returned unless they are faulty. If an item arrives "
    "damaged, customers should photograph the damage and contact us within forty-eight hours, so that we can "
    "claim from the courier and send a replacement straight away. Large items such as sofas and wardrobes are "
    "collected by our own van for a fee of twenty-five pounds, which is waived when the item is faulty."
)

COPY_PROMPTS: tuple[Question, ...] = (
    Question(1, "summarise", (f"Summarise the following passage in one paragraph, keeping its key facts.\n\n{_HARBOUR}",
                              "Now list the three periods of the town's history as bullet points.")),
    Question(2, "summarise", (f"Summarise these garden rules for a new member.\n\n{_GARDEN}",
                              "Which rules could lead to a member losing their bed?")),
    Question(3, "fix-grammar", ("Fix the grammar and spelling of this letter without changing its content.\n\n"
                                f"{_LETTER}",
                                "Now make the corrected letter more formal.")),
    Question(4, "fix-grammar", ("Correct the grammar mistakes in this report and return the full corrected text.\n\n"
                                f"{_REPORT}",
                                "List each mistake you corrected.")),
    Question(5, "rewrite", (f"Rewrite this recipe as a numbered list of steps, keeping every quantity.\n\n{_RECIPE}",
                            "Now rewrite the steps for a cake twice the size.")),
    Question(6, "rewrite", (f"Rewrite these minutes as a short email to the absent board member.\n\n{_MEETING}",
                            "Rewrite the email in a more casual tone.")),
    Question(7, "extract", (f"Extract every number in this trail description with what it refers to.\n\n{_TRAIL}",
                            "Extract the rules walkers must follow.")),
    Question(8, "extract", ("Extract the return policy's rules as a table with columns 'item' and 'rule'.\n\n"
                            f"{_POLICY}",
                            "Which items can never be returned for a refund?")),
)


def copy_prompts() -> list[Question]:
    """The built-in copy-heavy prompts (summarise, fix-grammar, rewrite, extract)."""
    return list(COPY_PROMPTS)
